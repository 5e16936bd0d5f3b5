use super::*;
use longctx_core::{ByteTokenizer, RawParams};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn task(given: &[(&str, &str)]) -> Result<LongBenchTask> {
    let mut raw: RawParams = given
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    raw.entry("data_dir".into())
        .or_insert_with(|| fixtures().join("data").to_string_lossy().into_owned());
    LongBenchTask::from_params(&Params::resolve(
        "task longbench",
        &LongBench::params(),
        &raw,
    )?)
}

/// Per-sample and per-dataset scores equal those of the official metric code, computed by
/// `scripts/reference_scores.py` into `fixtures/expected_scores.json`.
#[test]
fn fixture_scores_match_the_official_code() {
    let t = task(&[]).unwrap();
    let samples = t.samples(&ByteTokenizer).unwrap();
    assert_eq!(samples.len(), 33);
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("expected_scores.json")).unwrap(),
    )
    .unwrap();
    let predictions = std::fs::read_to_string(fixtures().join("predictions.jsonl")).unwrap();
    let mut per_dataset: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for line in predictions.lines() {
        let p: serde_json::Value = serde_json::from_str(line).unwrap();
        let (ds, id) = (p["dataset"].as_str().unwrap(), p["_id"].as_str().unwrap());
        let sample = samples
            .iter()
            .find(|s| s.id == format!("{ds}-{id}"))
            .unwrap();
        let got = t.score(sample, p["prediction"].as_str().unwrap())["score"];
        let want = expected["samples"][format!("{ds}/{id}")].as_f64().unwrap();
        assert!((got - want).abs() < 1e-9, "{ds}/{id}: {got} vs {want}");
        per_dataset.entry(ds.to_string()).or_default().push(got);
    }
    let scores: BTreeMap<String, f64> = per_dataset
        .iter()
        .map(|(ds, v)| (ds.clone(), dataset_score(v)))
        .collect();
    for (ds, s) in &scores {
        assert_eq!(*s, expected["datasets"][ds].as_f64().unwrap(), "{ds}");
    }
    let cats = category_averages(&scores);
    assert_eq!(cats.len(), 7);
    // Synthetic is passage_retrieval_en alone; the average is over 15 datasets.
    assert_eq!(cats["Synthetic"], scores["passage_retrieval_en"]);
    let fifteen: f64 = scores
        .iter()
        .filter(|(k, _)| *k != "passage_count")
        .map(|(_, v)| v)
        .sum();
    assert!((cats["Average"] - fifteen / 15.0).abs() < 1e-9);
}

#[test]
fn prompts_follow_dataset2prompt_and_pred_py() {
    let t = task(&[("datasets", "narrativeqa,trec,lcc")]).unwrap();
    let samples = t.samples(&ByteTokenizer).unwrap();
    let n1 = &samples[0];
    assert_eq!(
        n1.prompt(),
        "You are given a story, which can be either a novel or a movie script, and a question. \
         Answer the question asconcisely as you can, using a single phrase if possible. Do not \
         provide any explanation.\n\nStory: Aladdin walks into the cave. In the cave Aladdin \
         finds the old lamp.\n\nNow, answer the question based on the story asconcisely as you \
         can, using a single phrase if possible. Do not provide any explanation.\n\nQuestion: \
         Who finds the lamp?\n\nAnswer:"
    );
    assert_eq!(
        n1.context,
        "Aladdin walks into the cave. In the cave Aladdin finds the old lamp."
    );
    assert!(n1.chat_template);
    assert_eq!(n1.max_new_tokens, 128);
    let trec = samples.iter().find(|s| s.id == "trec-t1").unwrap();
    assert!(!trec.chat_template);
    assert_eq!(trec.max_new_tokens, 64);
    assert_eq!(
        trec.question,
        "\nQuestion: What does NASA stand for?\nType:"
    );
    assert!(samples
        .iter()
        .filter(|s| s.id.starts_with("lcc"))
        .all(|s| !s.chat_template));
    assert_eq!(t.group_by(), vec!["dataset", "category", "length_bucket"]);
}

#[test]
fn long_prompts_keep_their_first_and_last_halves() {
    let t = task(&[("datasets", "gov_report"), ("max_length", "200")]).unwrap();
    let samples = t.samples(&ByteTokenizer).unwrap();
    for s in &samples {
        let full = ByteTokenizer.encode(&s.prompt(), true).unwrap();
        assert!(full.len() <= 200, "{} tokens", full.len());
        assert_eq!(s.metadata["truncated"], true);
    }
    let s = &samples[0];
    // 100 tokens from each end: BOS + 99 bytes of the start, the last 100 bytes.
    let rec = &read_records(&fixtures().join("data"), dataset("gov_report").unwrap()).unwrap()[0];
    let (before, after) = dataset("gov_report")
        .unwrap()
        .prompt
        .split_once("{context}")
        .unwrap();
    let original = format!("{before}{}{after}", rec.context);
    assert_eq!(
        s.prompt(),
        format!("{}{}", &original[..99], &original[original.len() - 100..])
    );
    // The cut fell inside the context: the parts stay apart.
    assert_eq!(
        (s.instruction.as_str(), s.question.as_str()),
        (before, after)
    );
    // A cut inside the instruction and the question makes the kept text all context.
    let tiny = task(&[("datasets", "gov_report"), ("max_length", "100")]).unwrap();
    let s = &tiny.samples(&ByteTokenizer).unwrap()[0];
    assert!(s.instruction.is_empty() && s.question.is_empty());
    assert_eq!(
        s.context,
        format!("{}{}", &original[..49], &original[original.len() - 50..])
    );
    assert_eq!(samples[1].metadata["length_bucket"], "8k+");
    // A cap the prompt fits under leaves it whole.
    let whole = task(&[("datasets", "gov_report"), ("max_length", "100000")]).unwrap();
    let s = &whole.samples(&ByteTokenizer).unwrap()[0];
    assert_eq!(s.metadata["truncated"], false);
    assert_eq!(s.context, rec.context);
}

#[test]
fn cut_inside_the_context_keeps_the_parts_apart() {
    let dir = std::env::temp_dir().join(format!("longbench-cut-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rec = serde_json::json!({"input": "Q?", "context": "x".repeat(2000), "answers": ["a"],
        "length": 2000, "all_classes": null, "language": "en", "dataset": "qmsum", "_id": "1"});
    std::fs::write(dir.join("qmsum.jsonl"), format!("{rec}\n")).unwrap();
    let dir_s = dir.to_string_lossy().into_owned();
    let t = task(&[
        ("data_dir", &dir_s),
        ("datasets", "qmsum"),
        ("max_length", "1000"),
    ])
    .unwrap();
    let s = &t.samples(&ByteTokenizer).unwrap()[0];
    assert!(s
        .instruction
        .starts_with("You are given a meeting transcript"));
    assert!(s.question.ends_with("Query: Q?\nAnswer:"));
    assert!(s.context.chars().all(|c| c == 'x'));
    // BOS + 499 bytes + 500 bytes.
    assert_eq!(ByteTokenizer.encode(&s.prompt(), true).unwrap().len(), 1000);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_is_a_clear_error() {
    let err = task(&[("data_dir", "")]).unwrap_err().to_string();
    assert!(err.contains("data_dir"), "{err}");
    let err = task(&[("datasets", "narrativeqa,lsht")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown LongBench dataset 'lsht'"), "{err}");
    let err = task(&[("data_dir", "/nonexistent/lb"), ("datasets", "qasper")])
        .unwrap()
        .samples(&ByteTokenizer)
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/lb/qasper.jsonl"), "{err}");
    let dir = std::env::temp_dir().join(format!("longbench-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = std::fs::read_to_string(fixtures().join("data/trec.jsonl")).unwrap();
    let first = good.lines().next().unwrap();
    let dir_s = dir.to_string_lossy().into_owned();
    let cases = [
        ("trec", format!("{first}\n{{\"input\": 1}}\n"), "line 2"),
        (
            "trec",
            first.replace("\"all_classes\": [", "\"all_classes\": null, \"x\": ["),
            "line 1",
        ),
        (
            "passage_retrieval_en",
            format!(
                "{}\n",
                first.replace("Abbreviation expansion\"]", "nope\"]")
            ),
            "names no `Paragraph <n>`",
        ),
    ];
    for (ds, text, needle) in cases {
        std::fs::write(dir.join(format!("{ds}.jsonl")), text).unwrap();
        let err = task(&[("data_dir", &dir_s), ("datasets", ds)])
            .unwrap()
            .samples(&ByteTokenizer)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(needle) && err.contains(&format!("{ds}.jsonl")),
            "{err}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
