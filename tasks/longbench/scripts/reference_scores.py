#!/usr/bin/env python3
"""Expected LongBench scores for the hand-made fixture set, with the semantics of the
official THUDM/LongBench `metrics.py` and `eval.py` (written from their documented behaviour,
not copied). It uses the same pip packages the official code uses:

    pip install rouge==1.0.1 fuzzywuzzy==0.18.0      # and NOT python-Levenshtein

Usage (from the repository root):

    python3 tasks/longbench/scripts/reference_scores.py tasks/longbench/fixtures \
        > tasks/longbench/fixtures/expected_scores.json
"""
import json
import re
import string
import sys
import warnings
from collections import Counter
from pathlib import Path

warnings.filterwarnings("ignore", message="Using slow pure-python SequenceMatcher")
from fuzzywuzzy import fuzz  # noqa: E402
from fuzzywuzzy import fuzz as _fuzz_module  # noqa: E402
from rouge import Rouge  # noqa: E402

# fuzzywuzzy switches to python-Levenshtein's ratio when that is installed; LongBench's
# requirements do not install it, so its scores are difflib's.
assert _fuzz_module.SequenceMatcher.__module__ == "difflib", "uninstall python-Levenshtein"

METRIC = {
    "narrativeqa": "qa_f1", "qasper": "qa_f1", "multifieldqa_en": "qa_f1",
    "hotpotqa": "qa_f1", "2wikimqa": "qa_f1", "musique": "qa_f1", "triviaqa": "qa_f1",
    "gov_report": "rouge", "qmsum": "rouge", "multi_news": "rouge", "samsum": "rouge",
    "trec": "classification", "passage_retrieval_en": "retrieval", "passage_count": "count",
    "lcc": "code_sim", "repobench-p": "code_sim",
}
FIRST_LINE = {"trec", "triviaqa", "samsum", "lsht"}


def normalize_answer(s):
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1(pred_tokens, gt_tokens):
    same = sum((Counter(pred_tokens) & Counter(gt_tokens)).values())
    if same == 0:
        return 0
    p, r = same / len(pred_tokens), same / len(gt_tokens)
    return 2 * p * r / (p + r)


def qa_f1(pred, gt, **_):
    return f1(normalize_answer(pred).split(), normalize_answer(gt).split())


def rouge(pred, gt, **_):
    try:
        return Rouge().get_scores([pred], [gt], avg=True)["rouge-l"]["f"]
    except Exception:  # the official code catches everything (e.g. an empty hypothesis)
        return 0.0


def classification(pred, gt, all_classes, **_):
    matched = [c for c in all_classes if c in pred]
    for term in matched:  # removing while iterating, as the official code does
        if term in gt and term != gt:
            matched.remove(term)
    return 1.0 / len(matched) if gt in matched else 0.0


def share_equal(pred, target):
    nums = re.findall(r"\d+", pred)
    return 0.0 if not nums else sum(str(n) == str(target) for n in nums) / len(nums)


def retrieval(pred, gt, **_):
    return float(share_equal(pred, re.findall(r"Paragraph (\d+)", gt)[0]))


def count(pred, gt, **_):
    return float(share_equal(pred, gt))


def code_sim(pred, gt, **_):
    line = ""
    for l in pred.lstrip("\n").split("\n"):
        if "`" not in l and "#" not in l and "//" not in l:
            line = l
            break
    return fuzz.ratio(line, gt) / 100


FUNCS = dict(qa_f1=qa_f1, rouge=rouge, classification=classification,
             retrieval=retrieval, count=count, code_sim=code_sim)


def main(fixtures):
    fixtures = Path(fixtures)
    records = {}
    for path in sorted((fixtures / "data").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            records[(r["dataset"], r["_id"])] = r
    samples, per_dataset = {}, {}
    for line in (fixtures / "predictions.jsonl").read_text().splitlines():
        p = json.loads(line)
        ds, pred = p["dataset"], p["prediction"]
        r = records[(ds, p["_id"])]
        if ds in FIRST_LINE:
            pred = pred.lstrip("\n").split("\n")[0]
        score = 0.0
        for gt in r["answers"]:
            score = max(score, FUNCS[METRIC[ds]](pred, gt, all_classes=r["all_classes"]))
        samples[f"{ds}/{p['_id']}"] = score
        per_dataset.setdefault(ds, []).append(score)
    datasets = {ds: round(100 * sum(v) / len(v), 2) for ds, v in per_dataset.items()}
    json.dump({"samples": samples, "datasets": datasets}, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main(sys.argv[1])
