"""Realistic benchmark inputs: a subscribers file and a Hugging Face Daily Papers JSON file.

    python bench/gen.py OUTDIR [--subscribers 100000] [--papers 1000] [--seed 1]

writes OUTDIR/subscribers.yaml and OUTDIR/papers.json. Terms come from a vocabulary of a few
thousand ML phrases and author names, drawn with a Zipf-like skew (a few topics are popular, most
are niche), so that who-wants-what looks like a real community rather than uniform noise.
"""

from __future__ import annotations

import argparse
import json
import random
from datetime import datetime
from pathlib import Path


def words(text: str) -> list[str]:
    return text.split()


HEADS = words("""attention transformer diffusion retrieval reasoning alignment quantization pruning distillation
agent planning tokenizer embedding decoding sampling inference training finetuning pretraining
kernel compiler accelerator fpga gpu tpu memory cache scheduler optimizer gradient loss reward
policy value critic actor environment simulator benchmark dataset evaluation metric robustness
privacy fairness safety watermark detection segmentation captioning grounding tracking depth
pose motion video audio speech music image text code math protein molecule graph point mesh
nerf gaussian splatting rendering editing inpainting upscaling denoising compression sparsity
mixture routing expert adapter prompt instruction preference feedback verifier search tree
""")
MODS = words("""sparse linear efficient scalable multimodal multilingual causal contrastive generative
discriminative hierarchical adaptive federated continual incremental zero-shot few-shot
self-supervised semi-supervised unsupervised supervised offline online low-rank long-context
streaming speculative parallel distributed quantized mixed-precision neural latent
""")
PHRASES = """kv cache|mixture of experts|large language model|vision language model|state space model
|speculative decoding|flash attention|rotary position embedding|chain of thought|tree of thoughts
|direct preference optimization|reinforcement learning from human feedback|low-rank adaptation
|retrieval augmented generation|in-context learning|instruction tuning|reward model|world model
|text-to-image|text-to-video|image generation|video generation|3d reconstruction|gaussian splatting
|neural radiance field|diffusion transformer|flow matching|consistency model|score distillation
|graph neural network|protein folding|code generation|theorem proving|math reasoning|tool use
|web agent|embodied agent|robot manipulation|autonomous driving|speech recognition|text-to-speech
|machine translation|hallucination detection|jailbreak attack|red teaming|model merging
|knowledge distillation|post-training quantization|sparse attention|linear attention|ring attention
|paged attention|continuous batching|prefix caching|attention offloading|pipeline parallelism
|tensor parallelism|data parallelism|gradient checkpointing|activation recomputation""".replace(
    "\n", ""
).split("|")
FILLER = words("""we propose a novel method that improves the performance of existing approaches on several
tasks our results show significant gains over strong baselines while reducing cost and latency
experiments demonstrate that the proposed framework achieves state of the art results in both
quality and efficiency furthermore we analyze the limitations and discuss future directions this
work introduces new insights into how models learn represent and generalize across domains and
scales we release code and data to facilitate reproducibility and further research in the area
""")
FIRST = words("""Wei Li Jun Mei Anika Lucas Sofia Mateo Chloe Fatima Omar Priya Ravi Hana Yuki Kenji Elena
Ivan Olga Noah Emma Liam Ava Ethan Mia Arjun Diya Tomas Sara Ahmed Leila Jonas Nora Felix Ines
Hugo Clara Marco Giulia Pablo Lucia Tri Dao Min Seo Ji Hye Kwame Amara Tunde Zanele Mateus Ingrid""")
LAST = words("""Zhang Wang Li Chen Liu Tanaka Sato Kim Park Garcia Martinez Lopez Muller Schmidt Rossi
Bianchi Dubois Martin Novak Kowalski Ivanov Petrov Singh Patel Kumar Sharma Khan Ahmed Hassan
Okafor Mensah Silva Santos Costa Pereira Nguyen Tran Le Pham Dao Yamamoto Suzuki Ito Lee Choi
Jung Kang Cho Anderson Johnson Smith Brown Jones Miller Davis Wilson Taylor Thomas Moore Alvarez
Hernandez Gonzalez Rodriguez Fernandez Nakamura Kobayashi Watanabe Takahashi Andersson Nielsen""")
ORGS = """Microsoft|Google|Meta|NVIDIA|DeepSeek|Alibaba|Tencent|ByteDance|OpenAI|Anthropic|Hugging Face
|Stanford University|MIT|Tsinghua University|Peking University|ETH Zurich|EPFL|Mila|Allen AI
|Apple|Amazon|Salesforce|IBM|Samsung|Baidu|Shanghai AI Laboratory|Kuaishou|Moonshot AI|Mistral AI
|Cohere|Stability AI|Adobe|Sony|Huawei|University of Oxford|University of Cambridge|CMU|UC Berkeley
""".replace("\n", "").split("|")
REGEXES = [r"gpt-?4o?", r"llama[ -]?[23]", r"\bo1\b", r"qwen ?2(\.5)?", r"\d+b parameters?"]


def vocabulary(rng: random.Random, size: int) -> list[str]:
    terms = list(PHRASES)
    seen = set(terms)
    while len(terms) < size:
        kind = rng.random()
        if kind < 0.5:
            term = f"{rng.choice(MODS)} {rng.choice(HEADS)}"
        elif kind < 0.8:
            term = f"{rng.choice(HEADS)} {rng.choice(HEADS)}"
        else:
            term = f"{rng.choice(MODS)} {rng.choice(HEADS)} {rng.choice(HEADS)}"
        if term not in seen:
            seen.add(term)
            terms.append(term)
    return terms


def authors(rng: random.Random, size: int) -> list[str]:
    names: set[str] = set()
    while len(names) < size:
        names.add(f"{rng.choice(FIRST)} {rng.choice(LAST)}")
    return sorted(names)


class Skewed:
    """Draws with weight 1/(rank + 100): a long tail with a popular head."""

    def __init__(self, rng: random.Random, items: list[str]) -> None:
        self.rng = rng
        self.items = items[:]
        rng.shuffle(self.items)
        weights = [1 / (r + 300) for r in range(len(items))]
        total = 0.0
        self.cum = []
        for w in weights:
            total += w
            self.cum.append(total)

    def pick(self, k: int = 1) -> list[str]:
        return self.rng.choices(self.items, cum_weights=self.cum, k=k)


def paper_item(rng: random.Random, i: int, terms: Skewed, people: Skewed, day: datetime) -> dict:
    def sentence(n_terms: int, n_words: int) -> str:
        words = rng.choices(FILLER, k=n_words)
        for term in terms.pick(n_terms):
            words.insert(rng.randrange(len(words) + 1), term)
        return " ".join(words)

    title = sentence(rng.randint(1, 2), rng.randint(4, 9)).title()
    if rng.random() < 0.05:
        title += f" with {rng.choice(['GPT-4o', 'Llama 3', 'Qwen2.5', 'o1'])}"
    abstract = ". ".join(sentence(rng.randint(1, 3), rng.randint(12, 24)) for _ in range(6)) + "."
    org = rng.choice(ORGS) if rng.random() < 0.4 else None
    paper: dict[str, object] = {
        "id": f"2501.{10000 + i:05d}",
        "authors": [
            {"name": n, "hidden": False} for n in dict.fromkeys(people.pick(rng.randint(2, 8)))
        ],
        "publishedAt": day.isoformat() + ".000Z",
        "submittedOnDailyAt": day.isoformat() + ".000Z",
        "title": title,
        "summary": abstract,
        "upvotes": int(rng.expovariate(1 / 12)),
    }
    item: dict[str, object] = {
        "paper": paper,
        "publishedAt": day.isoformat() + ".000Z",
        "title": title,
        "summary": abstract,
        "numComments": int(rng.expovariate(1 / 2)),
    }
    if org:
        paper["organization"] = {"name": org.lower().replace(" ", ""), "fullname": org}
        item["organization"] = paper["organization"]
    return item


def q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def flow(values: list[str]) -> str:
    return "[" + ", ".join(q(v) for v in values) + "]"


def any_rule(rng: random.Random, terms: Skewed, people: Skewed) -> list[str]:
    picked = terms.pick(rng.randint(1, 4))
    if rng.random() < 0.08:
        picked[0] = picked[0][:-1] + "*"
    return [f"any: {flow(picked)}"]


def query_rule(rng: random.Random, terms: Skewed, people: Skewed) -> list[str]:
    a, b, c, d = terms.pick(4)
    return [f"query: {q(f'{q(a)} OR ({q(b)} AND {q(c)}) -{q(d)}')}"]


# (cumulative probability, keys of a rule of that kind)
KINDS = [
    (0.45, any_rule),
    (0.60, lambda rng, terms, people: [f"all: {flow(terms.pick(2))}"]),
    (0.75, lambda rng, terms, people: [f"authors: {flow(people.pick(rng.randint(1, 3)))}"]),
    (0.88, query_rule),
    (0.92, lambda rng, terms, people: [f"orgs: {flow([rng.choice(ORGS)])}"]),
    (0.93, lambda rng, terms, people: [f"regex: {flow([rng.choice(REGEXES)])}"]),
    (0.95, lambda rng, t, p: [f"any: {flow(t.pick(2))}", "categories: [cs.LG, cs.CL]"]),
    (1.00, lambda rng, t, p: [f"any: {flow(t.pick(3))}", f"none: {flow(t.pick(1))}"]),
]


def rule(rng: random.Random, terms: Skewed, people: Skewed) -> str:
    draw = rng.random()
    make = next(make for limit, make in KINDS if draw < limit)
    keys = make(rng, terms, people)
    if rng.random() < 0.1:
        keys.append(f"min_upvotes: {rng.choice([5, 10, 20, 50])}")
    if rng.random() < 0.1:
        keys.append("in: [title]")
    if rng.random() < 0.05:
        keys.append("alert: true")
    return "{" + ", ".join(keys) + "}"


def subscribers_yaml(rng: random.Random, n: int, terms: Skewed, people: Skewed) -> str:
    zones = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo", "Asia/Shanghai"]
    out = ['defaults: {schedule: "0 7 * * mon-fri", timezone: UTC, max_papers: 20}', "rule_sets:"]
    sets = [f"topic-{k}" for k in range(20)]
    for name in sets:
        out.append(f"  {name}:")
        out.extend(f"    - {rule(rng, terms, people)}" for _ in range(rng.randint(1, 4)))
    out.append("subscribers:")
    for i in range(n):
        out.append(f"  - email: user{i:06d}@example.org")
        if rng.random() < 0.5:
            out.append(f"    timezone: {rng.choice(zones)}")
        out.append("    rules:")
        out.extend(f"      - {rule(rng, terms, people)}" for _ in range(rng.randint(1, 8)))
        if rng.random() < 0.1:
            out.append(f"    use: [{rng.choice(sets)}]")
        if rng.random() < 0.1:
            out.append(f"    exclude: {flow(['survey', *terms.pick(1)])}")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--papers", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    terms = Skewed(rng, vocabulary(rng, 3000))
    people = Skewed(rng, authors(rng, 2500))
    args.outdir.mkdir(parents=True, exist_ok=True)
    day = datetime(2025, 1, 15)
    items = [paper_item(rng, i, terms, people, day) for i in range(args.papers)]
    (args.outdir / "papers.json").write_text(json.dumps(items), encoding="utf-8")
    text = subscribers_yaml(rng, args.subscribers, terms, people)
    (args.outdir / "subscribers.yaml").write_text(text, encoding="utf-8")
    print(
        json.dumps(
            {"subscribers": args.subscribers, "papers": args.papers, "dir": str(args.outdir)}
        )
    )


if __name__ == "__main__":
    main()
