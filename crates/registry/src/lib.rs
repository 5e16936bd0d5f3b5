//! Every built-in model, method and task, registered by name.
//!
//! Adding a model, method or task is one new crate plus one line here (see the checklist in
//! the README).

use burn::tensor::backend::Backend;
use longctx_core::Registry;

/// The registry of everything longctx ships, for backend `B`.
pub fn builtin<B: Backend>() -> Registry<B> {
    let mut r = Registry::new();
    // Models
    r.register_model::<longctx_model_transformer::TinyModel>();
    r.register_model::<longctx_model_transformer::SmolLm2>();
    r.register_model::<longctx_model_transformer::Gemma3_270m>();
    r.register_model::<longctx_model_transformer::LocalModel>();
    // KV methods
    r.register_method::<longctx_method_full::Full>();
    r.register_method::<longctx_method_kivi::Kivi>();
    r.register_method::<longctx_method_flexgen::FlexGen>();
    r.register_method::<longctx_method_int8::Int8>();
    r.register_method::<longctx_method_streaming_llm::StreamingLlm>();
    r.register_method::<longctx_method_h2o::H2o>();
    r.register_method::<longctx_method_snapkv::SnapKv>();
    r.register_method::<longctx_method_pyramidkv::PyramidKv>();
    r.register_method::<longctx_method_tova::Tova>();
    r.register_method::<longctx_method_knorm::KNorm>();
    r.register_method::<longctx_method_infllm::InfLlm>();
    r.register_method::<longctx_method_adakv::AdaKv>();
    // Tasks
    r.register_task::<longctx_task_passkey::Passkey>();
    r.register_task::<longctx_task_niah::Niah>();
    r.register_task::<longctx_task_ruler::Ruler>();
    r.register_task::<longctx_task_longbench::LongBench>();
    r.register_task::<longctx_task_perplexity::Perplexity>();
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use longctx_core::RawParams;

    #[test]
    fn builtins_are_listed_and_unknown_names_list_valid_ones() {
        let r = builtin::<Flex>();
        for method in [
            "full",
            "kivi",
            "flexgen",
            "int8",
            "streaming-llm",
            "h2o",
            "snapkv",
            "pyramidkv",
            "tova",
            "knorm",
            "infllm",
            "adakv",
        ] {
            assert!(r.methods().any(|m| m.name == method), "{method}");
            // Every method builds from its defaults, under its own name.
            let p = r.method_params(method, &RawParams::new()).unwrap();
            assert_eq!(r.build_method(method, &p).unwrap().name(), method);
        }
        let p = r
            .method_params("kivi", &RawParams::from([("bits".into(), "4".into())]))
            .unwrap();
        assert!(r.build_method("kivi", &p).is_ok());
        assert!(r.models().any(|m| m.name == "tiny"));
        assert!(r.models().any(|m| m.name == "smollm2-135m"));
        for task in ["passkey", "niah", "ruler", "longbench"] {
            assert!(r.tasks().any(|t| t.name == task), "{task}");
        }
        let err = r
            .method_params("fulll", &RawParams::new())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "unknown method 'fulll'; valid methods: adakv, flexgen, full, h2o, infllm, int8, kivi, knorm, pyramidkv, snapkv, streaming-llm, tova"
        );
        let err = r
            .task_params(
                "passkey",
                &RawParams::from([("lenghts".into(), "1".into())]),
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("task passkey has no parameter 'lenghts'"),
            "{err}"
        );
    }
}
