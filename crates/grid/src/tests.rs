use super::*;

use longctx_core::params::parse_assignments;

fn study(text: &str) -> Study {
    Study::parse(text, Path::new("s.toml")).unwrap()
}

fn cells(text: &str) -> Vec<Cell> {
    study(text)
        .cells(Path::new("s.toml"), Path::new("out"))
        .unwrap()
}

fn error(text: &str) -> String {
    match Study::parse(text, Path::new("studies/bad.toml")) {
        Err(e) => e.to_string(),
        Ok(s) => s
            .cells(Path::new("studies/bad.toml"), Path::new("out"))
            .unwrap_err()
            .to_string(),
    }
}

const GRID: &str = r#"
name = "t"
models = [{ name = "tiny" }]
methods = [
    { name = "full" },
    { name = "snapkv", params = { window = [8, 16], kernel = [1, 3] } },
    { name = "kivi", params = { bits = [2, 4] } },
]
budgets = ["2x", "4x"]
tasks = [{ name = "passkey", params = { lengths = "300", depths = [0, 1] } }]
backends = ["cpu", "ndarray"]
"#;

#[test]
fn lists_expand_to_cartesian_products_and_budgets_go_to_budgeted_methods_only() {
    let cells = cells(GRID);
    // Per backend and depth: full 1 + snapkv 2x2 windows/kernels x 2 budgets + kivi 2 bits.
    assert_eq!(cells.len(), 2 * 2 * (1 + 4 * 2 + 2));
    let count = |method: &str, budget: Budget| {
        cells
            .iter()
            .filter(|c| c.config.method.name == method && c.config.budget == budget)
            .count()
    };
    assert_eq!(count("full", Budget::Unlimited), 4);
    assert_eq!(count("kivi", Budget::Unlimited), 8);
    assert_eq!(count("snapkv", Budget::Ratio(2.0)), 16);
    assert_eq!(count("snapkv", Budget::Ratio(4.0)), 16);
    assert_eq!(
        count("full", Budget::Ratio(2.0)) + count("kivi", Budget::Ratio(4.0)),
        0
    );
    // `cpu` is resolved as `longctx run` resolves it.
    assert!(cells.iter().any(|c| c.config.backend == BackendKind::Flex));
    assert!(cells.iter().all(|c| c.config.backend != BackendKind::Cpu));
    // Every cell distinct, its path under `out` carrying its hash.
    let hashes: BTreeSet<_> = cells.iter().map(|c| &c.hash).collect();
    assert_eq!(hashes.len(), cells.len());
    for c in &cells {
        assert!(c.path.starts_with("out/passkey"), "{}", c.path.display());
        assert!(c.path.to_string_lossy().contains(&c.hash[..12]));
    }
    let labels: Vec<_> = cells.iter().map(|c| c.label.as_str()).collect();
    assert!(
        labels.contains(
            &"tiny | snapkv(kernel=3 window=16) | 4x | passkey(depths=1 lengths=300) | ndarray"
        ),
        "{labels:#?}"
    );
}

#[test]
fn a_cell_hashes_as_longctx_run_hashes_it() {
    // `longctx run --model tiny --method snapkv --window 16 --budget 4x --task passkey
    //  --lengths 300 --depths 1 --seed 3 --backend cpu`, as the CLI resolves it.
    let registry: Registry<Flex> = longctx_registry::builtin();
    let raw = |items: &[&str]| {
        parse_assignments(&items.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    };
    let expected = CellConfig::resolve(
        &registry,
        ("tiny", &RawParams::new()),
        ("snapkv", &raw(&["window=16"])),
        Budget::Ratio(4.0),
        ("passkey", &raw(&["lengths=300", "depths=1", "seed=3"])),
        BackendKind::Cpu,
        Sampling::Greedy,
        None,
    )
    .unwrap();
    let cells = cells(
        r#"
        name = "t"
        models = [{ name = "tiny" }]
        methods = [{ name = "snapkv", params = { window = 16 } }]
        budgets = ["4x"]
        tasks = [{ name = "passkey", params = { lengths = 300, depths = "1" } }]
        seeds = [3]
        "#,
    );
    assert_eq!(cells.len(), 1);
    assert_eq!(cells[0].config, expected);
    assert_eq!(cells[0].hash, config_hash(&expected));
    assert_eq!(cells[0].path, record_path(Path::new("out"), &expected));
}

#[test]
fn seeds_go_to_tasks_that_declare_one_and_nested_lists_are_one_value() {
    let cells = cells(
        r#"
        name = "t"
        models = [{ name = "tiny" }]
        methods = [{ name = "full" }]
        tasks = [{ name = "passkey", params = { lengths = [[300, 400], [500]] } }]
        seeds = [1, 2, 3]
        "#,
    );
    assert_eq!(cells.len(), 6);
    let lengths: BTreeSet<String> = cells
        .iter()
        .map(|c| format!("{:?}", c.config.task.params.int_list("lengths").unwrap()))
        .collect();
    assert_eq!(
        lengths,
        BTreeSet::from(["[300, 400]".to_string(), "[500]".to_string()])
    );
    let seeds: BTreeSet<i64> = cells
        .iter()
        .map(|c| c.config.task.params.int("seed").unwrap())
        .collect();
    assert_eq!(seeds, BTreeSet::from([1, 2, 3]));
}

#[test]
fn shards_partition_the_cells_deterministically() {
    let all = cells(GRID);
    for n in [1, 2, 3, 7, 50] {
        let mut seen: Vec<String> = Vec::new();
        for i in 1..=n {
            let shard = Some(Shard { index: i, count: n });
            let a: Vec<String> = shard_cells(all.clone(), shard)
                .into_iter()
                .map(|c| c.hash)
                .collect();
            // The same whatever the order the cells come in.
            let mut reversed = all.clone();
            reversed.reverse();
            let b: Vec<String> = shard_cells(reversed, shard)
                .into_iter()
                .map(|c| c.hash)
                .collect();
            assert_eq!(a, b);
            // Balanced to within one cell.
            assert!(a.len().abs_diff(all.len() / n) <= 1);
            seen.extend(a);
        }
        seen.sort();
        let mut expected: Vec<String> = all.iter().map(|c| c.hash.clone()).collect();
        expected.sort();
        assert_eq!(seen, expected, "every cell in exactly one of {n} shards");
    }
}

#[test]
fn shard_syntax() {
    assert_eq!("2/4".parse::<Shard>(), Ok(Shard { index: 2, count: 4 }));
    for bad in ["0/4", "5/4", "1/0", "1", "a/b", "1/2/3"] {
        let e = bad.parse::<Shard>().unwrap_err();
        assert!(e.contains("numbered from 1"), "{bad}: {e}");
    }
}

#[test]
fn bad_study_files_are_clear_errors() {
    let base = |methods: &str, tasks: &str| {
        format!(
            "name = \"t\"\nmodels = [{{ name = \"tiny\" }}]\nmethods = [{methods}]\n\
             budgets = [\"4x\"]\ntasks = [{tasks}]\n"
        )
    };
    let ok_task = r#"{ name = "passkey" }"#;
    for (text, wanted) in [
        (
            base(r#"{ name = "full" }, { name = "snapkvv" }"#, ok_task),
            vec![
                "studies/bad.toml",
                "methods[1] (snapkvv)",
                "unknown method 'snapkvv'; valid methods:",
                "snapkv",
            ],
        ),
        (
            base(r#"{ name = "snapkv", params = { windw = 8 } }"#, ok_task),
            vec![
                "methods[0] (snapkv)",
                "has no parameter 'windw'",
                "window",
            ],
        ),
        (
            base(
                r#"{ name = "full" }"#,
                r#"{ name = "passkey", params = { lengths = ["300", "x"] } }"#,
            ),
            vec!["tasks[0] (passkey)", "lengths"],
        ),
        (
            base(r#"{ name = "full" }"#, r#"{ name = "passkey", params = { depths = [] } }"#),
            vec!["tasks[0] (passkey)", "'depths' is an empty list"],
        ),
        (
            base(r#"{ name = "full" }"#, r#"{ name = "nope" }"#),
            vec!["tasks[0] (nope)", "unknown task 'nope'; valid tasks:", "passkey"],
        ),
        (
            "name = \"t\"\nmodels = [{ name = \"tiny\" }]\nmethods = [{ name = \"full\" }]\n\
             tasks = [{ name = \"passkey\" }]\nbudgets = [\"4y\"]\n"
                .into(),
            vec!["budgets[0]", "cannot parse budget '4y'"],
        ),
        (
            "name = \"t\"\nmodels = [{ name = \"tiny\" }]\nmethods = [{ name = \"full\" }]\n\
             tasks = [{ name = \"passkey\" }]\nbackends = [\"tpu\"]\n"
                .into(),
            vec!["backends[0]", "tpu"],
        ),
        (
            "name = \"t\"\nmodels = []\nmethods = [{ name = \"full\" }]\ntasks = [{ name = \"passkey\" }]\n"
                .into(),
            vec!["'models' is empty"],
        ),
        (
            "name = \"t\"\nmodel = [{ name = \"tiny\" }]\n".into(),
            vec!["studies/bad.toml", "not a valid study file", "unknown field `model`"],
        ),
        (
            "name = \"t\"\nmodels = [{ name = \"tiny\" }]\nmethods = [{ name = \"full\" }]\n\
             tasks = [{ name = \"passkey\", params = { seed = 1 } }]\nseeds = [1, 2]\n"
                .into(),
            vec!["tasks[0] (passkey)", "sets 'seed'"],
        ),
    ] {
        let e = error(&text);
        for w in wanted {
            assert!(e.contains(w), "expected '{w}' in: {e}");
        }
    }
}

#[test]
fn the_committed_studies_expand() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../studies");
    for file in ["example.toml", "smoke-tiny.toml"] {
        let path = root.join(file);
        let s = Study::load(&path).unwrap();
        let cells = s.cells(&path, &s.out_dir(None)).unwrap();
        assert!(!cells.is_empty(), "{file}");
    }
    let path = root.join("smoke-tiny.toml");
    let s = Study::load(&path).unwrap();
    assert!(s.cells(&path, Path::new("o")).unwrap().len() <= 4);
}

#[test]
fn cells_that_differ_only_in_a_sharing_method_are_grouped() {
    let cells = cells(
        r#"
name = "t"
models = [{ name = "tiny" }]
methods = [
    { name = "full" },
    { name = "snapkv", params = { window = [8, 16] } },
    { name = "flexgen" },
    { name = "flexgen", params = { quantize_prefill = false } },
    { name = "streaming-llm" },
    { name = "kivi" },
]
budgets = ["2x", "4x"]
tasks = [{ name = "passkey", params = { lengths = "300", depths = [0, 1] } }]
backends = ["cpu", "ndarray"]
"#,
    );
    // Per backend and depth: full, 2 snapkv x 2 budgets, 2 flexgen, 2 streaming-llm budgets, kivi.
    assert_eq!(cells.len(), 4 * 10);
    let groups = share_groups(cells.clone());
    let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
    // One group of 7 per backend and depth (full, snapkv x4, flexgen without quantize_prefill,
    // kivi); flexgen quantizing in append and streaming-llm's two budgets alone.
    assert_eq!(sizes.iter().filter(|&&n| n == 7).count(), 4, "{sizes:?}");
    assert_eq!(
        sizes.iter().filter(|&&n| n == 1).count(),
        4 * 3,
        "{sizes:?}"
    );
    assert_eq!(sizes.iter().sum::<usize>(), cells.len());
    for g in &groups {
        let first = &g[0].config;
        for c in g {
            assert_eq!(c.config.backend, first.backend);
            assert_eq!(c.config.task, first.task);
        }
        if g.len() == 1 {
            let name = &g[0].config.method.name;
            assert!(name == "flexgen" || name == "streaming-llm", "{name}");
        }
    }
    // Study order is kept: the first group starts with the first cell.
    assert_eq!(groups[0][0].hash, cells[0].hash);
}
