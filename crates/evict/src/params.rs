//! Parameters every eviction method takes.

use longctx_core::{ParamSpec, Params, Result};

/// `query_aware`: whether the question at the end of the prompt is inside the compressed
/// context. Default `false` (kvpress's default: keeping the question in the window artificially
/// favours query-aware selection such as SnapKV's); the paper's runs are query-aware for the
/// methods that compress in prefill.
pub fn query_aware() -> ParamSpec {
    ParamSpec::bool(
        "query_aware",
        false,
        "compress the question too (true), or prefill and compress the context first and \
         process the question uncompressed (false, the default)",
    )
}

/// The value of [`query_aware`] in validated parameters.
pub fn is_query_aware(params: &Params) -> Result<bool> {
    params.bool("query_aware")
}
