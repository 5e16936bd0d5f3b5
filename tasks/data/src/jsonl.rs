//! Samples as JSONL, one [`Sample`] per line, so that a generated set can be frozen, shared
//! and read back exactly.

use std::io::Write;
use std::path::Path;

use longctx_core::{Error, Result, Sample};

/// Writes `samples` to `path`, one JSON object per line.
pub fn write_samples(path: &Path, samples: &[Sample]) -> Result<()> {
    let mut out = Vec::new();
    for s in samples {
        serde_json::to_writer(&mut out, s)
            .map_err(|e| Error::file(path, format!("serialising sample {}: {e}", s.id)))?;
        out.push(b'\n');
    }
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(&out).map_err(|e| Error::io(path, e))
}

/// Reads samples written by [`write_samples`]; blank lines are skipped and a malformed line is
/// an error naming the file and line.
pub fn read_samples(path: &Path) -> Result<Vec<Sample>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| Error::file(path, format!("line {}: not a sample: {e}", i + 1)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn samples_round_trip_and_bad_lines_are_named() {
        let sample = Sample {
            id: "a".into(),
            instruction: "Read.\n".into(),
            context: "x \"quoted\"\nline".into(),
            question: "\nQ?".into(),
            answer_prefix: " A:".into(),
            references: vec!["1".into(), "2".into()],
            max_new_tokens: 8,
            chat_template: true,
            metadata: BTreeMap::from([("length".to_string(), 512.into())]),
            continuation: Some("scored text".into()),
        };
        let path = std::env::temp_dir().join(format!("longctx-jsonl-{}.jsonl", std::process::id()));
        let samples = vec![
            sample.clone(),
            Sample {
                id: "b".into(),
                ..sample
            },
        ];
        write_samples(&path, &samples).unwrap();
        assert_eq!(read_samples(&path).unwrap(), samples);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"id\": 3}\n");
        std::fs::write(&path, text).unwrap();
        let err = read_samples(&path).unwrap_err().to_string();
        assert!(
            err.contains("line 3") && err.contains("longctx-jsonl"),
            "{err}"
        );
        std::fs::remove_file(&path).unwrap();
    }
}
