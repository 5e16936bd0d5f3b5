//! The official per-dataset settings (THUDM/LongBench `config/dataset2prompt.json`,
//! `dataset2maxlen.json`, `eval.py`, `pred.py`) for the 16 English datasets the paper runs.

/// How a dataset is scored (LongBench's `dataset2metric`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    QaF1,
    RougeL,
    Classification,
    Retrieval,
    Count,
    CodeSim,
}

impl Metric {
    /// The official function's name.
    pub fn name(self) -> &'static str {
        match self {
            Metric::QaF1 => "qa_f1_score",
            Metric::RougeL => "rouge_score",
            Metric::Classification => "classification_score",
            Metric::Retrieval => "retrieval_score",
            Metric::Count => "count_score",
            Metric::CodeSim => "code_sim_score",
        }
    }
}

/// One dataset's settings.
#[derive(Clone, Copy, Debug)]
pub struct Dataset {
    pub name: &'static str,
    /// The paper's category (Single-Doc QA, ..., Code).
    pub category: &'static str,
    /// `dataset2prompt`, filled with `{context}` and `{input}`.
    pub prompt: &'static str,
    /// `dataset2maxlen`: tokens to generate.
    pub max_new_tokens: usize,
    pub metric: Metric,
    /// `pred.py` skips the chat template for these (few-shot and code datasets).
    pub chat_template: bool,
    /// `eval.py` scores only the first line of the prediction for these.
    pub first_line_only: bool,
}

const MULTI_DOC_QA: &str = "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:";

const fn ds(
    name: &'static str,
    category: &'static str,
    prompt: &'static str,
    max_new_tokens: usize,
    metric: Metric,
    chat_template: bool,
    first_line_only: bool,
) -> Dataset {
    Dataset {
        name,
        category,
        prompt,
        max_new_tokens,
        metric,
        chat_template,
        first_line_only,
    }
}

/// The 16 English datasets, in the paper's order.
pub const DATASETS: [Dataset; 16] = [
    ds("narrativeqa", "Single-Doc QA", "You are given a story, which can be either a novel or a movie script, and a question. Answer the question asconcisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nStory: {context}\n\nNow, answer the question based on the story asconcisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:", 128, Metric::QaF1, true, false),
    ds("qasper", "Single-Doc QA", "You are given a scientific article and a question. Answer the question as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nArticle: {context}\n\n Answer the question based on the above article as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:", 128, Metric::QaF1, true, false),
    ds("multifieldqa_en", "Single-Doc QA", "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question based on the above text, only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:", 64, Metric::QaF1, true, false),
    ds("hotpotqa", "Multi-Doc QA", MULTI_DOC_QA, 32, Metric::QaF1, true, false),
    ds("2wikimqa", "Multi-Doc QA", MULTI_DOC_QA, 32, Metric::QaF1, true, false),
    ds("musique", "Multi-Doc QA", MULTI_DOC_QA, 32, Metric::QaF1, true, false),
    ds("gov_report", "Summarization", "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n{context}\n\nNow, write a one-page summary of the report.\n\nSummary:", 512, Metric::RougeL, true, false),
    ds("qmsum", "Summarization", "You are given a meeting transcript and a query containing a question or instruction. Answer the query in one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the above meeting transcript in one or more sentences.\n\nQuery: {input}\nAnswer:", 512, Metric::RougeL, true, false),
    ds("multi_news", "Summarization", "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n{context}\n\nNow, write a one-page summary of all the news.\n\nSummary:", 512, Metric::RougeL, true, false),
    ds("trec", "Few-shot", "Please determine the type of the question below. Here are some examples of questions.\n\n{context}\n{input}", 64, Metric::Classification, false, true),
    ds("triviaqa", "Few-shot", "Answer the question based on the given passage. Only give me the answer and do not output any other words. The following are some examples.\n\n{context}\n\n{input}", 32, Metric::QaF1, false, true),
    ds("samsum", "Few-shot", "Summarize the dialogue into a few short sentences. The following are some examples.\n\n{context}\n\n{input}", 128, Metric::RougeL, false, true),
    ds("passage_count", "Synthetic", "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Please carefully read these paragraphs and determine how many unique paragraphs there are after removing duplicates. In other words, how many non-repeating paragraphs are there in total?\n\n{context}\n\nPlease enter the final count of unique paragraphs after removing duplicates. The output format should only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer is: ", 32, Metric::Count, true, false),
    ds("passage_retrieval_en", "Synthetic", "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which paragraph the abstract is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the number of the paragraph that the abstract is from. The answer format must be like \"Paragraph 1\", \"Paragraph 2\", etc.\n\nThe answer is: ", 32, Metric::Retrieval, true, false),
    ds("lcc", "Code", "Please complete the code given below. \n{context}Next line of code:\n", 64, Metric::CodeSim, false, false),
    ds("repobench-p", "Code", "Please complete the code given below. \n{context}{input}Next line of code:\n", 64, Metric::CodeSim, false, false),
];

/// The dataset named `name`, if it is one of the 16.
pub fn dataset(name: &str) -> Option<&'static Dataset> {
    DATASETS.iter().find(|d| d.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_prompt_has_one_context_before_its_input() {
        for d in &DATASETS {
            assert_eq!(d.prompt.matches("{context}").count(), 1, "{}", d.name);
            let inputs = d.prompt.matches("{input}").count();
            assert!(inputs <= 1, "{}", d.name);
            if inputs == 1 {
                assert!(
                    d.prompt.find("{context}") < d.prompt.find("{input}"),
                    "{}",
                    d.name
                );
            }
        }
        // The paper's 6 categories; 15 of the 16 are averaged (passage_count is not).
        let cats: std::collections::BTreeSet<_> = DATASETS.iter().map(|d| d.category).collect();
        assert_eq!(cats.len(), 6);
    }
}
