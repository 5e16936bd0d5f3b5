//! Tokenizers rebuilt from GGUF metadata: byte-level BPE (`tokenizer.ggml.model == "gpt2"`)
//! and SentencePiece BPE (`"llama"`, see [`crate::spm`]).

use std::collections::HashMap;

use longctx_core::{Error, Result};
use longctx_io::gguf::GgufFile;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::{sha256_hex, spm, ChatTemplate, HfTokenizer};

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Values of `tokenizer.ggml.pre` this crate knows how to pre-tokenize.
pub const SUPPORTED_GGUF_PRE_TOKENIZERS: &[&str] = &[
    "default",
    "gpt-2",
    "smollm",
    "starcoder",
    "refact",
    "codeshell",
    "llama-bpe",
    "llama3",
    "qwen2",
];

/// Llama 3's split regex (also used by Qwen2 with single digits instead of up to three).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer Hugging Face uses for the family llama.cpp calls `pre`.
///
/// - `smollm`, `starcoder`, `refact`, `codeshell`: single digits, then GPT-2's byte-level
///   regex (HF: `Sequence[Digits(individual_digits), ByteLevel(use_regex)]`).
/// - `gpt-2`, `default`: GPT-2's byte-level regex.
/// - `llama-bpe`/`llama3`, `qwen2`: their split regex, then byte-level mapping without regex.
fn pre_tokenizer(pre: &str) -> std::result::Result<PreTokenizerWrapper, String> {
    let byte_level = |use_regex: bool| -> PreTokenizerWrapper {
        tokenizers::pre_tokenizers::byte_level::ByteLevel::new(false, true, use_regex).into()
    };
    let split = |regex: &str| -> std::result::Result<PreTokenizerWrapper, String> {
        Split::new(
            SplitPattern::Regex(regex.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map(Into::into)
        .map_err(|e| format!("bad split regex: {e}"))
    };
    Ok(match pre {
        "smollm" | "starcoder" | "refact" | "codeshell" => {
            Sequence::new(vec![Digits::new(true).into(), byte_level(true)]).into()
        }
        "default" | "gpt-2" => byte_level(true),
        "llama-bpe" | "llama3" => {
            Sequence::new(vec![split(LLAMA3_REGEX)?, byte_level(false)]).into()
        }
        "qwen2" => Sequence::new(vec![split(QWEN2_REGEX)?, byte_level(false)]).into(),
        other => {
            return Err(format!(
                "unsupported pre-tokenizer '{other}'; supported: {}",
                SUPPORTED_GGUF_PRE_TOKENIZERS.join(", ")
            ))
        }
    })
}

/// Reads an optional token id key, checking it is inside the vocabulary.
fn optional_id(file: &GgufFile, key: &str, n_tokens: usize) -> Result<Option<u32>> {
    if file.metadata_value(key).is_none() {
        return Ok(None);
    }
    let id = file.get_uint(key).map_err(io_err)?;
    if id as usize >= n_tokens {
        return Err(Error::file(
            file.path(),
            format!("{key} = {id} is outside the vocabulary of {n_tokens} tokens"),
        ));
    }
    Ok(Some(id as u32))
}

fn io_err(e: longctx_io::Error) -> Error {
    Error::Other(e.to_string())
}

/// An optional boolean key, `default` when absent.
fn optional_bool(file: &GgufFile, key: &str, default: bool) -> Result<bool> {
    match file.metadata_value(key) {
        None => Ok(default),
        Some(_) => file.get_bool(key).map_err(io_err),
    }
}

/// Architectures whose instruction-tuned models use Gemma's turn format; their base models'
/// GGUFs often carry no `tokenizer.chat_template`.
const GEMMA_ARCHITECTURES: &[&str] = &["gemma", "gemma2", "gemma3"];

pub(crate) fn build(file: &GgufFile) -> Result<HfTokenizer> {
    let path = file.path();
    let bad = |m: String| Error::file(path, m);
    let model = file.get_str("tokenizer.ggml.model").map_err(io_err)?;
    if model != "gpt2" && model != "llama" {
        return Err(bad(format!(
            "tokenizer.ggml.model is '{model}'; supported: 'gpt2' (byte-level BPE), \
             'llama' (SentencePiece BPE)"
        )));
    }
    let tokens = file
        .get_string_array("tokenizer.ggml.tokens")
        .map_err(io_err)?;
    if tokens.is_empty() {
        return Err(bad("tokenizer.ggml.tokens is empty".into()));
    }
    let types: Vec<i32> = match file.metadata_value("tokenizer.ggml.token_type") {
        None => vec![1; tokens.len()],
        Some(_) => file
            .get_i32_array("tokenizer.ggml.token_type")
            .map_err(io_err)?
            .to_vec(),
    };
    if types.len() != tokens.len() {
        return Err(bad(format!(
            "tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {}",
            types.len(),
            tokens.len()
        )));
    }
    let bos = optional_id(file, "tokenizer.ggml.bos_token_id", tokens.len())?;
    let eos = optional_id(file, "tokenizer.ggml.eos_token_id", tokens.len())?;
    let eot = optional_id(file, "tokenizer.ggml.eot_token_id", tokens.len())?;
    // llama.cpp adds BOS to a SentencePiece vocabulary unless the file says otherwise.
    let add_bos = optional_bool(
        file,
        "tokenizer.ggml.add_bos_token",
        model == "llama" && bos.is_some(),
    )?;
    if add_bos && bos.is_none() {
        return Err(bad(
            "tokenizer.ggml.add_bos_token is true but tokenizer.ggml.bos_token_id is missing"
                .into(),
        ));
    }

    // Canonical description of everything that defines the tokenizer (the gpt2 layout is
    // unchanged from before SentencePiece support, so recorded hashes stay valid).
    let mut def = Vec::new();
    let mut inner = if model == "gpt2" {
        let pre = match file.metadata_value("tokenizer.ggml.pre") {
            None => "default",
            Some(_) => file.get_str("tokenizer.ggml.pre").map_err(io_err)?,
        };
        let merges = file
            .get_string_array("tokenizer.ggml.merges")
            .map_err(io_err)?;
        def.extend_from_slice(format!("gguf-gpt2-bpe\npre={pre}\nbos={bos:?}\neos={eos:?}\neot={eot:?}\nadd_bos={add_bos}\ntokens\n").as_bytes());
        for (t, ty) in tokens.iter().zip(&types) {
            def.extend_from_slice(t.as_bytes());
            def.extend_from_slice(format!("\0{ty}\n").as_bytes());
        }
        def.extend_from_slice(b"merges\n");
        for m in merges {
            def.extend_from_slice(m.as_bytes());
            def.push(b'\n');
        }
        byte_level_bpe(file, pre, tokens, merges)?
    } else {
        let scores = file
            .get_f32_array("tokenizer.ggml.scores")
            .map_err(io_err)?;
        if scores.len() != tokens.len() {
            return Err(bad(format!(
                "tokenizer.ggml.scores has {} entries but tokenizer.ggml.tokens has {}",
                scores.len(),
                tokens.len()
            )));
        }
        let unk = optional_id(file, "tokenizer.ggml.unknown_token_id", tokens.len())?;
        let add_space_prefix = optional_bool(file, "tokenizer.ggml.add_space_prefix", true)?;
        def.extend_from_slice(format!("gguf-llama-spm\nadd_space_prefix={add_space_prefix}\nunk={unk:?}\nbos={bos:?}\neos={eos:?}\neot={eot:?}\nadd_bos={add_bos}\ntokens\n").as_bytes());
        for ((t, ty), score) in tokens.iter().zip(&types).zip(scores) {
            def.extend_from_slice(t.as_bytes());
            def.extend_from_slice(format!("\0{ty}\0{score}\n").as_bytes());
        }
        let unk = unk.map(|id| tokens[id as usize].as_str());
        spm::sentencepiece_bpe(tokens, scores, &types, unk, add_space_prefix)
            .map_err(|m| bad(format!("tokenizer.ggml.*: {m}")))?
    };

    // Control tokens are special (kept whole, skipped when decoding); user-defined ones are
    // always matched whole in the raw text, as llama.cpp does (Gemma's "\n", "  ", "<td>").
    let added = |want: i32, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(&types)
            .filter(|(_, &ty)| ty == want)
            .map(|(t, _)| AddedToken::from(t.clone(), special).normalized(false))
            .collect()
    };
    inner.add_special_tokens(&added(TOKEN_TYPE_CONTROL, true));
    inner.add_tokens(&added(TOKEN_TYPE_USER_DEFINED, false));

    let chat = match file.metadata_value("tokenizer.chat_template") {
        Some(v) => v.as_str().and_then(ChatTemplate::detect),
        None => {
            let arch = file.architecture().unwrap_or_default();
            (GEMMA_ARCHITECTURES.contains(&arch) && inner.token_to_id("<start_of_turn>").is_some())
                .then(ChatTemplate::gemma)
        }
    };
    // eos and eot, the chat template's end-of-turn token, and any well-known end token that
    // is a control token (SmolLM2's GGUF names <|im_end|> as eos; raw-text generation ends
    // with <|endoftext|>).
    let mut stop: Vec<u32> = eos.into_iter().chain(eot).collect();
    let end_of_turn = chat.as_ref().map(|c| c.end_of_turn());
    for name in end_of_turn.iter().chain(crate::KNOWN_STOP_TOKENS) {
        let control = |&id: &u32| types[id as usize] == TOKEN_TYPE_CONTROL;
        let is_eot = Some(*name) == end_of_turn;
        if let Some(id) = inner.token_to_id(name).filter(|id| is_eot || control(id)) {
            if !stop.contains(&id) {
                stop.push(id);
            }
        }
    }

    Ok(HfTokenizer {
        inner,
        bos_to_add: if add_bos { bos } else { None },
        stop,
        chat,
        vocab_size: tokens.len(),
        sha256: sha256_hex(&def),
    })
}

/// The byte-level BPE pipeline of a `gpt2` vocabulary (added tokens not included).
fn byte_level_bpe(
    file: &GgufFile,
    pre: &str,
    tokens: &[String],
    merges_raw: &[String],
) -> Result<Tokenizer> {
    let bad = |m: String| Error::file(file.path(), m);
    let pre_tok = pre_tokenizer(pre).map_err(|m| bad(format!("tokenizer.ggml.pre: {m}")))?;
    // The first id of a duplicated token string wins, as in llama.cpp.
    let mut vocab: HashMap<String, u32> = HashMap::with_capacity(tokens.len());
    for (id, t) in tokens.iter().enumerate() {
        vocab.entry(t.clone()).or_insert(id as u32);
    }
    let mut merges = Vec::with_capacity(merges_raw.len());
    for (i, m) in merges_raw.iter().enumerate() {
        let (a, b) = m.split_once(' ').ok_or_else(|| {
            bad(format!(
                "tokenizer.ggml.merges[{i}] = {m:?} is not two tokens separated by a space"
            ))
        })?;
        merges.push((a.to_string(), b.to_string()));
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab.into_iter().collect::<Vocab>(), merges)
        .build()
        .map_err(|e| bad(format!("building the BPE model from tokenizer.ggml.*: {e}")))?;
    let mut inner = Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(pre_tok));
    inner.with_decoder(Some(ByteLevel::default()));
    Ok(inner)
}
