//! Helpers shared by this crate's integration tests.

use burn::tensor::backend::Backend;
use longctx_core::{KvMethod, RawParams};

/// The built-in method `name` (a composition `A+B` too) with the parameters `given`.
pub fn method<B: Backend>(name: &str, given: &[(&str, &str)]) -> Box<dyn KvMethod<B>> {
    let r = longctx_registry::builtin::<B>();
    let raw: RawParams = given
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let p = r.method_params(name, &raw).unwrap();
    r.build_method(name, &p).unwrap()
}
