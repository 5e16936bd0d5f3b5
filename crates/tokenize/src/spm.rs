//! SentencePiece BPE vocabularies (GGUF `tokenizer.ggml.model == "llama"`: Gemma, Llama 2,
//! Mistral) as a Hugging Face `tokenizers` BPE pipeline.
//!
//! A SentencePiece BPE model stores pieces with scores but no merge list: encoding starts from
//! single characters and repeatedly merges the adjacent pair whose concatenation is the
//! highest-scoring piece (llama.cpp's `llm_tokenizer_spm` does the same). The equivalent merge
//! list is every split `left + right` of a piece into two pieces, ranked by the merged piece's
//! score, which is how transformers' GGUF converter rebuilds it too. Characters outside the
//! vocabulary fall back to `<0xXX>` byte pieces, and spaces are spelled `▁` (U+2581).

use std::collections::HashMap;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::Tokenizer;

/// SentencePiece's piece types, which GGUF's `tokenizer.ggml.token_type` copies.
pub(crate) const TOKEN_TYPE_NORMAL: i32 = 1;

/// How SentencePiece spells a space inside pieces.
const SPACE: char = '\u{2581}';

/// The merges implied by a SentencePiece BPE vocabulary, best first.
///
/// Every normal piece of two or more characters yields one merge per way of cutting it into two
/// normal pieces. Merges are ordered by the merged piece's score (higher first), then by its id
/// and the cut position, so the order is deterministic. Control, user-defined, byte and unused
/// pieces take no part: SentencePiece never forms them by merging.
pub(crate) fn derive_merges(
    tokens: &[String],
    scores: &[f32],
    types: &[i32],
) -> Vec<(String, String)> {
    let mut normal: HashMap<&str, u32> = HashMap::with_capacity(tokens.len());
    for (id, t) in tokens.iter().enumerate() {
        if types[id] == TOKEN_TYPE_NORMAL {
            normal.entry(t.as_str()).or_insert(id as u32);
        }
    }
    // (score, merged id, cut byte offset)
    let mut ranked: Vec<(f32, u32, usize)> = Vec::new();
    for (&piece, &id) in &normal {
        for (cut, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(cut);
            if normal.contains_key(left) && normal.contains_key(right) {
                ranked.push((scores[id as usize], id, cut));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    ranked
        .into_iter()
        .map(|(_, id, cut)| {
            let (left, right) = tokens[id as usize].split_at(cut);
            (left.to_string(), right.to_string())
        })
        .collect()
}

/// Whether `token` is a byte-fallback piece `<0xXX>`.
fn is_byte_piece(token: &str) -> bool {
    token.len() == 6
        && token.starts_with("<0x")
        && token.ends_with('>')
        && token[3..5].chars().all(|c| c.is_ascii_hexdigit())
}

/// The `tokenizers` pipeline of a SentencePiece BPE vocabulary (added tokens not included).
///
/// - model: BPE over all `tokens` (ids = positions; the first of duplicated strings wins) with
///   [`derive_merges`], byte fallback when the vocabulary has `<0xXX>` pieces, and `unk` for
///   anything else it cannot spell;
/// - spaces become `▁`; with `add_space_prefix` (Llama 2) a `▁` is also prepended to the start
///   of the text, as Hugging Face's Llama tokenizer does (Gemma has no prefix);
/// - decoding maps `▁` back to spaces, joins byte pieces into UTF-8, and drops the prefix.
pub(crate) fn sentencepiece_bpe(
    tokens: &[String],
    scores: &[f32],
    types: &[i32],
    unk: Option<&str>,
    add_space_prefix: bool,
) -> Result<Tokenizer, String> {
    let mut vocab: HashMap<String, u32> = HashMap::with_capacity(tokens.len());
    for (id, t) in tokens.iter().enumerate() {
        vocab.entry(t.clone()).or_insert(id as u32);
    }
    let byte_fallback = tokens.iter().any(|t| is_byte_piece(t));
    let mut builder = BPE::builder()
        .vocab_and_merges(
            vocab.into_iter().collect::<Vocab>(),
            derive_merges(tokens, scores, types),
        )
        .byte_fallback(byte_fallback)
        .fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk.to_string());
    }
    let bpe = builder
        .build()
        .map_err(|e| format!("building the BPE model: {e}"))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let to_space = Replace::new(SPACE.to_string(), " ").map_err(|e| e.to_string())?;
    let mut decoders: Vec<DecoderWrapper> = vec![
        to_space.into(),
        ByteFallback::default().into(),
        Fuse::default().into(),
    ];
    if add_space_prefix {
        // Replaces spaces and prepends one `▁` to the first segment of the text only.
        tokenizer.with_pre_tokenizer(Some(Metaspace::new(SPACE, PrependScheme::First, false)));
        decoders.push(Strip::new(' ', 1, 0).into());
    } else {
        tokenizer.with_normalizer(Some(
            Replace::new(" ", SPACE.to_string()).map_err(|e| e.to_string())?,
        ));
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// `<unk>`, then normal pieces with the given scores.
    fn vocab(pieces: &[(&str, f32)]) -> (Vec<String>, Vec<f32>, Vec<i32>) {
        let mut tokens = strings(&["<unk>"]);
        let mut scores = vec![0.0];
        let mut types = vec![2];
        for &(p, s) in pieces {
            tokens.push(p.to_string());
            scores.push(s);
            types.push(TOKEN_TYPE_NORMAL);
        }
        (tokens, scores, types)
    }

    fn pieces(t: &Tokenizer, text: &str) -> Vec<String> {
        let ids = t.encode_fast(text, false).unwrap().get_ids().to_vec();
        ids.iter().map(|&id| t.id_to_token(id).unwrap()).collect()
    }

    #[test]
    fn merges_follow_the_merged_piece_score() {
        let (mut tokens, mut scores, mut types) =
            vocab(&[("a", -10.0), ("b", -10.0), ("c", -10.0)]);
        for (p, s) in [("ab", -2.0), ("bc", -1.0), ("abc", -3.0)] {
            tokens.push(p.into());
            scores.push(s);
            types.push(TOKEN_TYPE_NORMAL);
        }
        let merges = derive_merges(&tokens, &scores, &types);
        let m = |l: &str, r: &str| (l.to_string(), r.to_string());
        assert_eq!(
            merges,
            vec![m("b", "c"), m("a", "b"), m("a", "bc"), m("ab", "c")]
        );
        let t = sentencepiece_bpe(&tokens, &scores, &types, Some("<unk>"), false).unwrap();
        // "bc" outranks "ab", and "abc" is then reached through "a" + "bc".
        assert_eq!(pieces(&t, "abc"), ["abc"]);
        assert_eq!(pieces(&t, "abcb"), ["abc", "b"]);
    }

    #[test]
    fn score_order_decides_between_overlapping_pairs() {
        let (tokens, scores, types) = vocab(&[
            ("x", -9.0),
            ("y", -9.0),
            ("z", -9.0),
            ("xy", -5.0),
            ("yz", -4.0),
        ]);
        let t = sentencepiece_bpe(&tokens, &scores, &types, Some("<unk>"), false).unwrap();
        assert_eq!(pieces(&t, "xyz"), ["x", "yz"]);
        let (tokens, scores, types) = vocab(&[
            ("x", -9.0),
            ("y", -9.0),
            ("z", -9.0),
            ("xy", -4.0),
            ("yz", -5.0),
        ]);
        let t = sentencepiece_bpe(&tokens, &scores, &types, Some("<unk>"), false).unwrap();
        assert_eq!(pieces(&t, "xyz"), ["xy", "z"]);
    }

    #[test]
    fn non_normal_pieces_are_never_merged_into() {
        let (mut tokens, mut scores, mut types) = vocab(&[("<", -9.0), ("s", -9.0), (">", -9.0)]);
        for (p, ty) in [("<s", TOKEN_TYPE_NORMAL), ("<s>", 3)] {
            tokens.push(p.into());
            scores.push(-1.0);
            types.push(ty);
        }
        let merges = derive_merges(&tokens, &scores, &types);
        assert_eq!(merges, vec![("<".to_string(), "s".to_string())]);
    }

    #[test]
    fn spaces_byte_fallback_and_unknown() {
        let (mut tokens, mut scores, mut types) = vocab(&[
            ("▁", -9.0),
            ("h", -9.0),
            ("i", -9.0),
            ("▁h", -2.0),
            ("▁hi", -1.0),
        ]);
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            scores.push(0.0);
            types.push(6);
        }
        let t = sentencepiece_bpe(&tokens, &scores, &types, Some("<unk>"), false).unwrap();
        assert_eq!(pieces(&t, "hi hi"), ["h", "i", "▁hi"]);
        // 'é' is not a piece: its two UTF-8 bytes.
        assert_eq!(pieces(&t, "é"), ["<0xC3>", "<0xA9>"]);
        let ids = t.encode_fast("hi é hi", false).unwrap().get_ids().to_vec();
        assert_eq!(t.decode(&ids, true).unwrap(), "hi é hi");

        // Without byte pieces the character is unknown.
        let (tokens, scores, types) = vocab(&[("▁", -9.0), ("h", -9.0)]);
        let t = sentencepiece_bpe(&tokens, &scores, &types, Some("<unk>"), false).unwrap();
        assert_eq!(pieces(&t, "hé"), ["h", "<unk>"]);
    }

    #[test]
    fn space_prefix_is_added_once_and_stripped_on_decode() {
        let (tokens, scores, types) = vocab(&[
            ("▁", -9.0),
            ("h", -9.0),
            ("i", -9.0),
            ("▁h", -2.0),
            ("▁hi", -1.0),
        ]);
        let t = sentencepiece_bpe(&tokens, &scores, &types, Some("<unk>"), true).unwrap();
        assert_eq!(pieces(&t, "hi hi"), ["▁hi", "▁hi"]);
        let ids = t.encode_fast("hi hi", false).unwrap().get_ids().to_vec();
        assert_eq!(t.decode(&ids, true).unwrap(), "hi hi");
    }

    #[test]
    fn byte_pieces_are_recognised() {
        assert!(is_byte_piece("<0x0A>"));
        assert!(is_byte_piece("<0xff>"));
        assert!(!is_byte_piece("<0x0G>"));
        assert!(!is_byte_piece("<0x0A"));
        assert!(!is_byte_piece("<unk>"));
    }
}
