//! Hugging Face checkpoints: `config.json` plus `model.safetensors` or a sharded
//! `model.safetensors.index.json` (F32/F16/BF16), for the `llama`, `mistral`, `qwen2` and
//! `gemma3_text` model types.
//!
//! [`hf_config`] reads both transformers 4.x configs (`rope_theta`, `rope_scaling`,
//! Gemma-3's `rope_local_base_freq` and `sliding_window_pattern`) and 5.x configs
//! (`rope_parameters`, per layer type for Gemma-3; `layer_types`). Anything the model would
//! compute differently from transformers (an unknown RoPE type, an MLP bias, attention logit
//! soft-capping, bidirectional attention, another activation) is an error naming the file and
//! the field rather than a silently different model.

use std::path::Path;

use burn::tensor::backend::Backend;
use longctx_core::{Error, Result};
use longctx_io::safetensors::SafetensorsCheckpoint;
use serde_json::Value;

use crate::config::{Family, LayerType, TransformerConfig};
use crate::model::Transformer;
use crate::rope::RopeScaling;
use crate::weights::{build, HostTensors, Layout, Part, WeightDtype};

/// The `model_type`s [`hf_config`] accepts.
pub const SUPPORTED_MODEL_TYPES: [&str; 4] = ["llama", "mistral", "qwen2", "gemma3_text"];

/// Typed access to `config.json` fields with errors that name the file and the field.
struct Fields<'a> {
    path: &'a Path,
    json: &'a Value,
}

impl Fields<'_> {
    fn err(&self, field: &str, problem: impl std::fmt::Display) -> Error {
        Error::file(self.path, format!("field '{field}': {problem}"))
    }
    /// The field, `None` if absent or null.
    fn get(&self, field: &str) -> Option<&Value> {
        self.json.get(field).filter(|v| !v.is_null())
    }
    fn usize(&self, field: &str) -> Result<usize> {
        self.opt_usize(field)?
            .ok_or_else(|| self.err(field, "missing"))
    }
    fn opt_usize(&self, field: &str) -> Result<Option<usize>> {
        self.get(field)
            .map(|v| {
                v.as_u64().map(|x| x as usize).ok_or_else(|| {
                    self.err(field, format!("expected a non-negative integer, got {v}"))
                })
            })
            .transpose()
    }
    fn opt_f64(&self, field: &str) -> Result<Option<f64>> {
        self.get(field)
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| self.err(field, format!("expected a number, got {v}")))
            })
            .transpose()
    }
    fn opt_bool(&self, field: &str) -> Result<Option<bool>> {
        self.get(field)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| self.err(field, format!("expected true or false, got {v}")))
            })
            .transpose()
    }
    fn opt_str(&self, field: &str) -> Result<Option<&str>> {
        self.get(field)
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| self.err(field, format!("expected a string, got {v}")))
            })
            .transpose()
    }
    /// A nested object as fields of its own (errors name `outer.inner`).
    fn nested(&self, field: &str) -> Option<Fields<'_>> {
        self.get(field)
            .filter(|v| v.is_object())
            .map(|json| Fields {
                path: self.path,
                json,
            })
    }
}

/// RoPE base and scaling from a `rope_parameters`/`rope_scaling` object `p` (`field` names it
/// in errors); `theta` is the base when `p` has none.
fn rope_from(p: Option<&Fields>, field: &str, theta: Option<f64>) -> Result<(f64, RopeScaling)> {
    let theta_in_p = match p {
        Some(p) => p.opt_f64("rope_theta")?,
        None => None,
    };
    let theta = theta_in_p.or(theta).unwrap_or(10000.0);
    let Some(p) = p else {
        return Ok((theta, RopeScaling::None));
    };
    let kind = match p.opt_str("rope_type")? {
        Some(k) => Some(k),
        None => p.opt_str("type")?,
    };
    let need = |k: &str| {
        p.opt_f64(k)?
            .ok_or_else(|| p.err(&format!("{field}.{k}"), "missing"))
    };
    let scaling = match kind.unwrap_or("default") {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: need("factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: need("factor")?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            original_max_position_embeddings: p
                .opt_usize("original_max_position_embeddings")?
                .ok_or_else(|| {
                    p.err(
                        &format!("{field}.original_max_position_embeddings"),
                        "missing",
                    )
                })?,
        },
        other => {
            return Err(p.err(
                &format!("{field}.rope_type"),
                format!("'{other}' is not supported (supported: default, linear, llama3)"),
            ))
        }
    };
    Ok((theta, scaling))
}

/// Parses a `config.json` (already read into `json`; `path` names it in errors).
pub fn hf_config(path: &Path, json: &Value) -> Result<TransformerConfig> {
    let f = Fields { path, json };
    let model_type = f
        .opt_str("model_type")?
        .ok_or_else(|| f.err("model_type", "missing"))?;
    let family = match model_type {
        "llama" | "mistral" | "qwen2" => Family::Llama,
        "gemma3_text" => Family::Gemma3,
        "gemma3" => {
            return Err(f.err(
                "model_type",
                "'gemma3' is the multimodal Gemma-3; use a text-only checkpoint (model_type 'gemma3_text', Gemma3ForCausalLM)",
            ))
        }
        other => {
            return Err(f.err(
                "model_type",
                format!(
                    "'{other}' is not supported (supported: {})",
                    SUPPORTED_MODEL_TYPES.join(", ")
                ),
            ))
        }
    };
    let gemma = family == Family::Gemma3;
    let activation_field = if gemma {
        "hidden_activation"
    } else {
        "hidden_act"
    };
    let activation = f.opt_str(activation_field)?;
    let expected = if gemma { "gelu_pytorch_tanh" } else { "silu" };
    if activation.is_some_and(|a| a != expected) {
        return Err(f.err(
            activation_field,
            format!(
                "'{}' is not supported (only '{expected}')",
                activation.unwrap_or_default()
            ),
        ));
    }
    if f.opt_bool("mlp_bias")?.unwrap_or(false) {
        return Err(f.err("mlp_bias", "MLP biases are not supported"));
    }
    if f.opt_f64("attn_logit_softcapping")?.is_some() {
        return Err(f.err(
            "attn_logit_softcapping",
            "attention logit soft-capping is not supported",
        ));
    }
    if f.opt_bool("use_bidirectional_attention")?.unwrap_or(false) {
        return Err(f.err(
            "use_bidirectional_attention",
            "only causal attention is supported",
        ));
    }

    let hidden = f.usize("hidden_size")?;
    let n_heads = f.usize("num_attention_heads")?;
    let n_layers = f.usize("num_hidden_layers")?;
    let head_dim = match f.opt_usize("head_dim")? {
        Some(d) => d,
        None if n_heads > 0 && hidden.is_multiple_of(n_heads) => hidden / n_heads,
        None => {
            return Err(f.err(
                "head_dim",
                "missing, and hidden_size is not a multiple of num_attention_heads",
            ))
        }
    };
    // transformers' per-class defaults for `tie_word_embeddings`.
    let tie = f.opt_bool("tie_word_embeddings")?.unwrap_or(gemma);

    // Window and which layers use it.
    let sliding_window = f.opt_usize("sliding_window")?;
    let layer_types: Vec<LayerType> = match f.get("layer_types") {
        Some(v) => {
            let list = v
                .as_array()
                .ok_or_else(|| f.err("layer_types", "expected a list"))?;
            if list.len() != n_layers {
                return Err(f.err(
                    "layer_types",
                    format!("{} entries for {n_layers} layers", list.len()),
                ));
            }
            list.iter()
                .enumerate()
                .map(|(i, t)| match t.as_str() {
                    Some("full_attention") => Ok(LayerType::Global),
                    Some("sliding_attention") => Ok(LayerType::Local),
                    _ => Err(f.err(
                        &format!("layer_types[{i}]"),
                        format!("{t} is neither 'full_attention' nor 'sliding_attention'"),
                    )),
                })
                .collect::<Result<_>>()?
        }
        None => (0..n_layers)
            .map(|i| {
                let local = match model_type {
                    "mistral" => sliding_window.is_some(),
                    "qwen2" => {
                        f.opt_bool("use_sliding_window")?.unwrap_or(false)
                            && sliding_window.is_some()
                            && i >= f.opt_usize("max_window_layers")?.unwrap_or(0)
                    }
                    "gemma3_text" => {
                        let pattern = f.opt_usize("sliding_window_pattern")?.unwrap_or(6);
                        pattern == 0 || (i + 1) % pattern != 0
                    }
                    _ => false,
                };
                Ok(if local {
                    LayerType::Local
                } else {
                    LayerType::Global
                })
            })
            .collect::<Result<_>>()?,
    };
    // Qwen2 writes a window even when `use_sliding_window` is false; it is unused then.
    let sliding_window = sliding_window.filter(|_| layer_types.contains(&LayerType::Local));

    // RoPE: transformers 5 `rope_parameters` (per layer type for Gemma-3), else 4.x fields.
    let top_theta = f.opt_f64("rope_theta")?;
    let (rope_theta, rope_scaling, local_rope_theta) = match f.nested("rope_parameters") {
        Some(p) if gemma => {
            let (theta, scaling) = rope_from(
                p.nested("full_attention").as_ref(),
                "rope_parameters.full_attention",
                top_theta,
            )?;
            let local = p.nested("sliding_attention");
            let (local_theta, local_scaling) = rope_from(
                local.as_ref(),
                "rope_parameters.sliding_attention",
                Some(10000.0),
            )?;
            if local_scaling != RopeScaling::None {
                return Err(f.err(
                    "rope_parameters.sliding_attention",
                    "RoPE scaling on local layers is not supported",
                ));
            }
            (theta, scaling, Some(local_theta))
        }
        Some(p) => {
            let (theta, scaling) = rope_from(Some(&p), "rope_parameters", top_theta)?;
            (theta, scaling, None)
        }
        None => {
            let (theta, scaling) =
                rope_from(f.nested("rope_scaling").as_ref(), "rope_scaling", top_theta)?;
            let local = if gemma {
                Some(f.opt_f64("rope_local_base_freq")?.unwrap_or(10000.0))
            } else {
                None
            };
            (theta, scaling, local)
        }
    };

    let attention_bias = f.opt_bool("attention_bias")?.unwrap_or(false);
    let c = TransformerConfig {
        architecture: if gemma { "gemma3" } else { model_type }.to_string(),
        family,
        vocab_size: f.usize("vocab_size")?,
        hidden_size: hidden,
        intermediate_size: f.usize("intermediate_size")?,
        n_layers,
        n_heads,
        n_kv_heads: f.opt_usize("num_key_value_heads")?.unwrap_or(n_heads),
        head_dim,
        rope_theta,
        rope_scaling,
        local_rope_theta,
        rms_norm_eps: f.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
        max_context: f.usize("max_position_embeddings")?,
        tie_embeddings: tie,
        sliding_window,
        layer_types,
        qkv_bias: model_type == "qwen2" || attention_bias,
        o_bias: attention_bias,
        query_pre_attn_scalar: if gemma {
            Some(f.opt_f64("query_pre_attn_scalar")?.unwrap_or(256.0))
        } else {
            None
        },
        final_logit_softcap: f.opt_f64("final_logit_softcapping")?,
    };
    c.validate().map_err(|e| Error::file(path, e.to_string()))?;
    Ok(c)
}

impl HostTensors for SafetensorsCheckpoint {
    fn path(&self) -> &Path {
        self.dir()
    }
    fn contains(&self, name: &str) -> bool {
        SafetensorsCheckpoint::contains(self, name)
    }
    fn read(&self, name: &str, want: &[usize]) -> Result<Vec<f32>> {
        let (shape, data) = self
            .tensor_f32(name)
            .map_err(|e| Error::Other(e.to_string()))?;
        if shape != want {
            return Err(Error::file(
                self.dir(),
                format!("tensor {name} has shape {shape:?}, expected {want:?}"),
            ));
        }
        Ok(data)
    }
}

/// transformers' parameter names (`model.layers.N.self_attn.q_proj.weight`, ...).
fn hf_layer_name(layer: usize, part: Part) -> String {
    let name = match part {
        Part::AttnNorm => "input_layernorm.weight",
        Part::Q => "self_attn.q_proj.weight",
        Part::K => "self_attn.k_proj.weight",
        Part::V => "self_attn.v_proj.weight",
        Part::O => "self_attn.o_proj.weight",
        Part::QBias => "self_attn.q_proj.bias",
        Part::KBias => "self_attn.k_proj.bias",
        Part::VBias => "self_attn.v_proj.bias",
        Part::OBias => "self_attn.o_proj.bias",
        Part::QNorm => "self_attn.q_norm.weight",
        Part::KNorm => "self_attn.k_norm.weight",
        // Llama's norm before the MLP is called `post_attention_layernorm`; Gemma-3 has a
        // `post_attention_layernorm` on the attention output and `pre_feedforward_layernorm`
        // before the MLP. `gemma_layer_name` swaps them in.
        Part::PostAttnNorm => "post_attention_layernorm.weight",
        Part::MlpNorm => "post_attention_layernorm.weight",
        Part::PostMlpNorm => "post_feedforward_layernorm.weight",
        Part::Gate => "mlp.gate_proj.weight",
        Part::Up => "mlp.up_proj.weight",
        Part::Down => "mlp.down_proj.weight",
    };
    format!("model.layers.{layer}.{name}")
}

fn gemma_layer_name(layer: usize, part: Part) -> String {
    match part {
        Part::MlpNorm => format!("model.layers.{layer}.pre_feedforward_layernorm.weight"),
        other => hf_layer_name(layer, other),
    }
}

/// Opens the checkpoint directory `dir` and loads its model onto `device` in `dtype`,
/// named `name`. Returns the model and the configuration's SHA-256-able source text.
pub fn load_hf<B: Backend>(
    dir: &Path,
    name: &str,
    dtype: WeightDtype,
    device: &B::Device,
) -> Result<Transformer<B>> {
    let ckpt = SafetensorsCheckpoint::open(dir).map_err(|e| Error::Other(e.to_string()))?;
    let json = ckpt
        .config_json()
        .map_err(|e| Error::Other(e.to_string()))?;
    let config = hf_config(&ckpt.config_path(), &json)?;
    let gemma = config.family == Family::Gemma3;
    let layout = Layout {
        layer: if gemma {
            gemma_layer_name
        } else {
            hf_layer_name
        },
        embed: "model.embed_tokens.weight",
        final_norm: "model.norm.weight",
        lm_head: "lm_head.weight",
        norm_offset: if gemma { 1.0 } else { 0.0 },
        unpermute_qk: false,
    };
    build(config, name, &ckpt, &layout, dtype, device)
}
