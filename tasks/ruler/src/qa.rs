//! RULER's QA tasks (`qa.py`): the gold paragraph(s) of a question mixed with distractor
//! paragraphs up to the searched count. `qa_1` reads SQuAD v2.0 dev (`dev-v2.0.json`, answerable
//! questions only), `qa_2` HotpotQA dev-distractor (`hotpot_dev_distractor_v1.json`), both in
//! their public formats from user-supplied files.

use std::collections::BTreeMap;
use std::path::Path;

use rand::{rngs::StdRng, seq::IndexedRandom, seq::SliceRandom};
use serde_json::Value;

use longctx_core::{Error, Result};

use crate::{Generated, Generator};

const INSTRUCTION: &str = "Answer the question based on the given documents. Only give me the answer and do not output any other words.\n\nThe following are given documents.\n\n";
const QUESTION: &str = "\n\nAnswer the question based on the given documents. Only give me the answer and do not output any other words.\n\nQuestion: {query}";
const ANSWER_PREFIX: &str = " Answer:";

/// One question: its gold documents and, for SQuAD, the other paragraphs of its article.
#[derive(Clone, Debug)]
pub struct Question {
    pub query: String,
    pub answers: Vec<String>,
    pub gold: Vec<usize>,
    pub more: Vec<usize>,
}

/// Questions and the document pool (sorted, de-duplicated, as RULER builds it).
#[derive(Clone, Debug)]
pub struct QaData {
    pub questions: Vec<Question>,
    pub docs: Vec<String>,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::file(path, format!("line {}: not JSON: {e}", e.line())))
}

fn field<'a>(v: &'a Value, key: &str, path: &Path, at: &str) -> Result<&'a Value> {
    v.get(key)
        .ok_or_else(|| Error::file(path, format!("{at}: missing field `{key}`")))
}

fn text<'a>(v: &'a Value, key: &str, path: &Path, at: &str) -> Result<&'a str> {
    field(v, key, path, at)?
        .as_str()
        .ok_or_else(|| Error::file(path, format!("{at}: `{key}` is not a string")))
}

fn array<'a>(v: &'a Value, key: &str, path: &Path, at: &str) -> Result<&'a Vec<Value>> {
    field(v, key, path, at)?
        .as_array()
        .ok_or_else(|| Error::file(path, format!("{at}: `{key}` is not a list")))
}

fn index_docs(all: Vec<String>) -> (Vec<String>, BTreeMap<String, usize>) {
    let mut docs = all;
    docs.sort();
    docs.dedup();
    let ids = docs
        .iter()
        .enumerate()
        .map(|(i, d)| (d.clone(), i))
        .collect();
    (docs, ids)
}

impl QaData {
    /// SQuAD v2.0 (`{"data": [{"paragraphs": [{"context", "qas": [{"question",
    /// "is_impossible", "answers": [{"text"}]}]}]}]}`); impossible questions are dropped.
    pub fn read_squad(path: &Path) -> Result<Self> {
        let root = read_json(path)?;
        let articles = array(&root, "data", path, "top level")?;
        let mut all = Vec::new();
        for (a, art) in articles.iter().enumerate() {
            for (p, para) in array(art, "paragraphs", path, &format!("data[{a}]"))?
                .iter()
                .enumerate()
            {
                all.push(
                    text(para, "context", path, &format!("data[{a}].paragraphs[{p}]"))?.to_string(),
                );
            }
        }
        let (docs, ids) = index_docs(all);
        let mut questions = Vec::new();
        for (a, art) in articles.iter().enumerate() {
            let paras = array(art, "paragraphs", path, &format!("data[{a}]"))?;
            let article_docs: Vec<usize> = paras
                .iter()
                .filter_map(|p| p.get("context").and_then(Value::as_str).map(|c| ids[c]))
                .collect();
            for (p, para) in paras.iter().enumerate() {
                let at = format!("data[{a}].paragraphs[{p}]");
                let doc = ids[text(para, "context", path, &at)?];
                for (q, qa) in array(para, "qas", path, &at)?.iter().enumerate() {
                    let at = format!("{at}.qas[{q}]");
                    if qa
                        .get("is_impossible")
                        .and_then(Value::as_bool)
                        .unwrap_or(false)
                    {
                        continue;
                    }
                    let answers = array(qa, "answers", path, &at)?
                        .iter()
                        .map(|x| text(x, "text", path, &at).map(str::to_string))
                        .collect::<Result<Vec<_>>>()?;
                    questions.push(Question {
                        query: text(qa, "question", path, &at)?.to_string(),
                        answers,
                        gold: vec![doc],
                        more: article_docs.iter().copied().filter(|&d| d != doc).collect(),
                    });
                }
            }
        }
        Ok(Self { questions, docs })
    }

    /// HotpotQA (`[{"question", "answer", "context": [[title, [sentences]]]}]`); a
    /// document is `title + "\n" + "".join(sentences)`.
    pub fn read_hotpotqa(path: &Path) -> Result<Self> {
        let root = read_json(path)?;
        let items = root
            .as_array()
            .ok_or_else(|| Error::file(path, "top level: expected a list of questions"))?;
        let mut parsed = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let at = format!("[{i}]");
            let mut docs = Vec::new();
            for (c, entry) in array(item, "context", path, &at)?.iter().enumerate() {
                let bad = || {
                    Error::file(
                        path,
                        format!("{at}.context[{c}]: expected [title, [sentences]]"),
                    )
                };
                let pair = entry.as_array().filter(|p| p.len() == 2).ok_or_else(bad)?;
                let title = pair[0].as_str().ok_or_else(bad)?;
                let sents: Vec<&str> = pair[1]
                    .as_array()
                    .ok_or_else(bad)?
                    .iter()
                    .map(|s| s.as_str().ok_or_else(bad))
                    .collect::<Result<_>>()?;
                docs.push(format!("{title}\n{}", sents.concat()));
            }
            parsed.push((
                text(item, "question", path, &at)?.to_string(),
                text(item, "answer", path, &at)?.to_string(),
                docs,
            ));
        }
        let (docs, ids) = index_docs(parsed.iter().flat_map(|p| p.2.clone()).collect());
        let questions = parsed
            .into_iter()
            .map(|(query, answer, d)| Question {
                query,
                answers: vec![answer],
                gold: d.iter().map(|x| ids[x]).collect(),
                more: Vec::new(),
            })
            .collect();
        Ok(Self { questions, docs })
    }
}

/// The QA generator; sample `index` asks question `index` (cycling).
pub struct Qa {
    pub data: QaData,
}

impl Generator for Qa {
    fn tokens_to_generate(&self) -> usize {
        32
    }

    fn generate(&self, rng: &mut StdRng, size: usize, index: usize) -> Result<Generated> {
        let q = &self.data.questions[index % self.data.questions.len()];
        let num_docs = size.max(q.gold.len());
        let mut chosen: Vec<usize> = if num_docs >= self.data.docs.len() {
            (0..self.data.docs.len()).collect()
        } else if num_docs - q.gold.len() > q.more.len() {
            let taken: std::collections::BTreeSet<usize> =
                q.gold.iter().chain(&q.more).copied().collect();
            let others: Vec<usize> = (0..self.data.docs.len())
                .filter(|i| !taken.contains(i))
                .collect();
            let extra = num_docs - q.gold.len() - q.more.len();
            q.gold
                .iter()
                .chain(&q.more)
                .copied()
                .chain(others.choose_multiple(rng, extra).copied())
                .collect()
        } else {
            q.gold
                .iter()
                .copied()
                .chain(
                    q.more
                        .choose_multiple(rng, num_docs - q.gold.len())
                        .copied(),
                )
                .collect()
        };
        chosen.shuffle(rng);
        let context = chosen
            .iter()
            .enumerate()
            .map(|(i, &d)| format!("Document {}:\n{}", i + 1, self.data.docs[d]))
            .collect::<Vec<_>>()
            .join("\n\n");
        Ok(Generated {
            instruction: INSTRUCTION.to_string(),
            context,
            question: QUESTION.replace("{query}", &q.query),
            answer_prefix: ANSWER_PREFIX.to_string(),
            outputs: q.answers.clone(),
        })
    }
}
