"""Config schema: one dataclass per section, a docstring under every field.

The docstrings are the config reference: `python -m lightmbert.data_prep.shard --help` prints them, and
the README's tables are generated from them (`python -m lightmbert.configs.reference`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

# ISO 639-1 two-letter codes: a two-letter language key must be one of them, so that a typo
# such as `ge` for German or `english` fails before any work instead of making a new stream.
ISO_639_1 = frozenset("""
aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy
da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu
hy hz ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb
lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om
or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st su sv sw
ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu
""".split())

_LANG_RE = re.compile(r"^([a-z]{2,3})(-[a-z0-9]{2,8})*$")


def check_language_key(key: str) -> None:
    """Language keys are lowercase BCP-47-like tags: `de`, `pt-br`, `zh-hant`, `ast`."""
    m = _LANG_RE.match(key)
    if not m:
        raise ValueError(f"unknown language key {key!r}: expected a lowercase language tag "
                         f"such as 'de', 'pt-br' or 'ast'")
    if len(m.group(1)) == 2 and m.group(1) not in ISO_639_1:
        raise ValueError(f"unknown language key {key!r}: {m.group(1)!r} is not an ISO 639-1 code")


# ============================================================================ data_prep
@dataclass
class InputConfig:
    """Where the per-language text comes from."""

    languages: dict[str, list[str]] = field(default_factory=dict)
    """Language key → list of files or globs (`.txt`, `.txt.gz`, `.jsonl`, `.jsonl.gz`). Text
    files hold one segment per line, documents separated by blank lines; a JSONL record is a
    document whose text field may hold several lines."""
    directory: str | None = None
    """A folder whose entries `<lang>.txt[.gz]`, `<lang>.jsonl[.gz]` or `<lang>/` (all
    supported files inside) each become a language; merged with `languages`."""
    include: list[str] = field(default_factory=list)
    """Keep only these languages (empty: all that were found)."""
    exclude: list[str] = field(default_factory=list)
    """Drop these languages."""
    text_field: str = "text"
    """Field holding the text in JSONL records."""
    encoding: str = "utf-8"
    """Default text encoding. Undecodable bytes are replaced (U+FFFD) and counted."""
    encodings: dict[str, str] = field(default_factory=dict)
    """Per-file encodings: glob pattern matched against the file path → codec, e.g.
    `{"*/ru/*.txt": koi8-r}`. The first matching pattern wins."""
    normalize: Literal["NFC", "NFKC", "none"] = "NFC"
    """Unicode normalisation applied to every line before tokenisation."""
    chunk_mb: int = 32
    """Uncompressed text files larger than this are split into chunks (at line boundaries)
    that are tokenised in parallel; packing restarts at a chunk boundary. The output depends
    on this value, never on the number of workers."""
    parallel: str | None = None
    """Optional JSONL of translation items ({"en": text, "translations": {lang: text}}, e.g. the
    demo's parallel.jsonl): tokenised like the text (normalised, prefix, start/end tokens, one
    sequence of at most seq_len per side) into `<dir>/parallel/parallel-NNNNNN.tar` with a
    `parallel` entry in the manifest; only translations into this run's languages are kept.
    The trainer uses them with `data.parallel: true`."""

    def __post_init__(self) -> None:
        for key in [*self.languages, *self.include, *self.exclude]:
            check_language_key(key)
        if self.chunk_mb < 1:
            raise ValueError(f"chunk_mb: must be >= 1, got {self.chunk_mb}")
        if not self.languages and not self.directory:
            raise ValueError("no input: set input.languages and/or input.directory")


@dataclass
class TokenizerConfig:
    """The tokenizer: must be the teacher's."""

    name_or_path: str
    """A Hugging Face hub name, a local model/tokenizer directory, or a `tokenizer.json` file
    (any fast tokenizer)."""


@dataclass
class PackingConfig:
    """How token segments become training sequences."""

    seq_len: int = 128
    """Maximum sequence length including the special tokens ([CLS]/[SEP] or <s>/</s>)."""
    mode: Literal["pack", "segment"] = "pack"
    """`pack`: consecutive segments of one document share a sequence (BERT-style; sequences
    never cross documents). `segment`: one segment per sequence (e.g. sentence-level data)."""
    prefix: str = ""
    """Text put after the start token of every sequence, e.g. `"query: "` for E5 teachers."""

    def __post_init__(self) -> None:
        if not 8 <= self.seq_len <= 65536:
            raise ValueError(f"seq_len: must be in [8, 65536], got {self.seq_len}")


@dataclass
class OutputConfig:
    """Where and how the shards are written."""

    dir: str
    """Output folder: `<dir>/<lang>/<lang>-NNNNNN.tar`, `<dir>/manifest.json`,
    `<dir>/config.yaml`."""
    shard_samples: int = 10000
    """Sequences per tar shard (the last shard of a language may hold fewer)."""

    def __post_init__(self) -> None:
        if self.shard_samples < 1:
            raise ValueError(f"shard_samples: must be >= 1, got {self.shard_samples}")


@dataclass
class PrepConfig:
    """`python -m lightmbert.data_prep.shard`: multilingual text → tokenised webdataset shards."""

    input: InputConfig
    tokenizer: TokenizerConfig
    output: OutputConfig
    packing: PackingConfig = field(default_factory=PackingConfig)
    workers: int = 0
    """Worker processes (0: one per CPU core). The output does not depend on it."""
    task_index: int = 0
    """Job arrays (slurm/prep.sh): with num_tasks > 1 this task only tokenises every
    num_tasks-th work unit (from task_index) and stops before writing shards; a final run
    with num_tasks: 1 writes the shards and the manifest (byte-identical to one big run)."""
    num_tasks: int = 1
    """Number of array tasks sharing the tokenisation (1: the whole job)."""

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError(f"workers: must be >= 0, got {self.workers}")
        if not 0 <= self.task_index < max(self.num_tasks, 1) or self.num_tasks < 1:
            raise ValueError(f"task_index: must be in [0, num_tasks={self.num_tasks}), got {self.task_index}")


# ============================================================================ trainer
@dataclass
class RunConfig:
    """Where a run writes and how long it lasts."""

    output_dir: str
    """Run folder: checkpoints/, tensorboard/, config.yaml, ds_config.json, student/ (export)."""
    max_steps: int = 1000
    """Optimizer steps to train for (each = micro_batch × grad_accum × world samples)."""
    seed: int = 1234
    """Seeds model init, data order, dropout."""
    log_interval: int = 10
    """Console line and TensorBoard scalars every N steps."""
    save_interval: int = 500
    """Checkpoint every N steps (also at the end and on SIGUSR1/SIGTERM); 0: only those."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    max_bad_steps: int = 10
    """Abort after this many consecutive steps with a NaN/Inf loss (each one is skipped)."""
    export: bool = True
    """Write the student as a Hugging Face directory (`<output_dir>/student`) at the end."""
    progress_bar: bool = True
    """A tqdm progress bar on rank 0 (off automatically when stderr is not a terminal)."""
    trace: bool = False
    """Write `trace_rank<r>.jsonl`: every step's exact loss, a hash of its batches and the
    (language, epoch, sample id) of every sample row (for checking determinism, exact resume
    and that each sample is used once per epoch)."""

    def __post_init__(self) -> None:
        for key in ("max_steps", "log_interval"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if self.save_interval < 0 or self.keep_checkpoints < 1 or self.max_bad_steps < 1:
            raise ValueError("save_interval must be >= 0, keep_checkpoints and max_bad_steps >= 1")


@dataclass
class TeacherConfig:
    """The frozen teacher: any Hugging Face encoder of the BERT family."""

    name_or_path: str | None = None
    """Hub name or local directory (BertModel, BertForMaskedLM, XLM-R, multilingual-E5 ...)."""
    random_init: dict[str, Any] = field(default_factory=dict)
    """Instead of `name_or_path`: a BertConfig dict for a randomly initialised teacher (tests,
    smoke runs), e.g. {vocab_size: 300, hidden_size: 64, num_hidden_layers: 4, ...}."""
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Teacher weights/compute dtype: auto = bf16 on GPU, fp32 on CPU."""
    hub_kernels: bool = False
    """Let transformers (≥ 5, with Hugging Face's `kernels` package) replace layer forwards with
    kernels from the Hugging Face hub when it loads the teacher. Off: every model is loaded with
    `use_kernels=False`, so a run needs no network and computes the same on every machine. On:
    the machine must reach the hub (or have those kernels cached)."""

    def __post_init__(self) -> None:
        if bool(self.name_or_path) == bool(self.random_init):
            raise ValueError("set exactly one of teacher.name_or_path and teacher.random_init")


@dataclass
class StudentConfig:
    """The LightMBERT student: the teacher's embeddings + a subset of its layers."""

    num_layers: int = 6
    """Transformer layers of the student."""
    layer_selection: Literal["bottom", "uniform", "list"] = "bottom"
    """Which teacher layers initialise the student: bottom = 0..k−1 (the paper's default),
    uniform = evenly spaced, list = `layers`."""
    layers: list[int] = field(default_factory=list)
    """Teacher layer indices (0-based) for layer_selection = list."""
    freeze_embeddings: bool = True
    """Keep the (copied) embedding layer frozen: no gradient, not in the optimizer."""
    freeze_layers: int = 0
    """Also keep the student's bottom N transformer layers frozen (no gradient, not in the
    optimizer): only the layers above them learn (measured effect: lightmbert/benchmarks/README.md)."""
    hidden_size: int | None = None
    """A different width than the teacher's: random init (nothing can be copied) and a learned
    projection student → teacher width for the hidden loss. Needs freeze_embeddings: false."""
    init: Literal["teacher", "random"] = "teacher"
    """teacher = copy embeddings and layers; random = fresh init (an ablation)."""
    init_from: str | None = None
    """Start from an exported student (HF directory, e.g. a 128-token stage's `student/`) instead
    of copying the teacher: for a second, 512-token stage."""
    dropout: float | None = None
    """Student hidden/attention dropout during distillation (None: the teacher's config). The
    teacher runs without dropout, so with dropout on, part of every token-level term is the
    student's own noise."""

    def __post_init__(self) -> None:
        if self.num_layers < 1:
            raise ValueError(f"num_layers: must be >= 1, got {self.num_layers}")
        if self.layer_selection == "list" and len(self.layers) != self.num_layers:
            raise ValueError(f"layers: layer_selection=list needs {self.num_layers} entries, "
                             f"got {self.layers}")
        if not 0 <= self.freeze_layers < self.num_layers:
            raise ValueError(f"freeze_layers: must be in [0, num_layers={self.num_layers}), "
                             f"got {self.freeze_layers}")
        if self.hidden_size is not None and self.freeze_embeddings:
            raise ValueError("hidden_size: a different width cannot keep the teacher's frozen "
                             "embeddings; set freeze_embeddings: false")


@dataclass
class AttentionRelationsConfig:
    """MiniLMv2 self-attention relation distillation (`loss.attention_relations`): for each
    (student layer, teacher layer) pair, the Q–Q, K–K and V–V relations of each model —
    softmax_j(x_i·x_j/√d_r) over real tokens, per relation head — matched by
    KL(teacher ‖ student). Token-level, blind to rotations within a relation head, no width
    constraint (a narrower student gets narrower relation heads)."""

    weight: float = 0.0
    """Weight of the term (0: off). Its value is the sum over `relations`, averaged over pairs."""
    heads: int = 12
    """Relation heads R, independent of either model's attention heads: must divide both
    models' hidden sizes (MiniLMv2: 12 for base-size teachers, 48 for large ones)."""
    pairs: list[list[int]] = field(default_factory=list)
    """[[student layer, teacher layer], ...], 1-based; empty: the student's last layer ↔ the
    teacher's last layer. MiniLMv2 found an upper-middle teacher layer better than the last
    for large teachers (e.g. [[6, 10]])."""
    relations: list[Literal["query", "key", "value", "hidden"]] = field(
        default_factory=lambda: ["query", "key", "value"])
    """Which self-relations to match: the projections' (MiniLMv2: query, key, value) and/or
    `hidden`, the layer's output states — the only one that reaches the paired layer's
    attention output and feed-forward (Q/K/V are computed from the layer below)."""

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError("weight: must be >= 0")
        if self.heads < 1:
            raise ValueError(f"heads: must be >= 1, got {self.heads}")
        if not self.relations:
            raise ValueError("relations: name at least one of query, key, value, hidden")


@dataclass
class LossConfig:
    """Distillation objective: weighted sum of the terms below (each logged)."""

    hidden_weight: float = 1.0
    """Weight of the hidden-state MSE over the layer map."""
    attention: Literal["score_mse", "prob_kl", "none"] = "score_mse"
    """Attention loss from each mapped layer's Q/K: TinyBERT score MSE or MiniLM prob KL."""
    attention_weight: float = 1.0
    """Weight of the attention loss."""
    attention_temperature: float = 1.0
    """Temperature of prob_kl."""
    layer_map: Literal["uniform", "last"] | list[list[int]] = "uniform"
    """uniform: student layer i ↔ teacher layer i·L_t/L_s (1-based, 0 = embeddings; 6 of 12:
    1↔2, 2↔4, …, 6↔12); last: only the last layers; or explicit [[student, teacher], ...]
    pairs (1-based)."""
    embedding_weight: float = 0.0
    """Weight of embeddings ↔ embeddings hidden MSE (0 with frozen, identical embeddings)."""
    pooled_weight: float = 0.0
    """Sentence-level term: 1 − cosine between the student's and the teacher's mean-pooled last
    hidden states (the pooling sentence-embedding teachers such as E5 are used with)."""
    relation_weight: float = 0.0
    """Sentence-level term on the in-batch cosine-similarity matrices of the student's and the
    teacher's mean-pooled last hidden states (the geometry retrieval uses; blind to rotations,
    so the student need not move into the teacher's coordinates)."""
    relation: Literal["mse", "kl", "pearson"] = "mse"
    """mse: squared difference of the similarities; kl: KL(teacher ‖ student) between each row's
    softmax over the other sentences at `relation_temperature` (the ranking retrieval uses);
    pearson: squared difference of each row's standardised similarities to the other sentences
    (2 − 2·Pearson r: blind to a row's shift and scale, as its ranking is)."""
    relation_temperature: float = 0.05
    """Temperature of the kl relation."""
    relation_memory: int = 0
    """N > 0: each sentence's relations also reach the last N sentences of earlier micro-batches
    of this rank (a cross-batch memory: the teacher's vectors exact, the student's as they were
    then, without gradient), so far more relations pin the geometry down than one micro-batch
    holds. Not checkpointed: refilled within N / micro_batch_size steps after a resume."""
    logit_weight: float = 0.0
    """Logit KD through the MLM heads (both models need one): fused KL at `temperature`."""
    temperature: float = 2.0
    """Temperature of the logit KD."""
    mlm_weight: float = 0.0
    """Hard MLM loss of the student on masked tokens (both models need MLM heads); turns on
    BERT masking of the inputs (data.mlm_probability) for teacher and student alike."""
    attention_relations: AttentionRelationsConfig = field(default_factory=AttentionRelationsConfig)
    """MiniLMv2 self-attention relations (off unless its weight > 0)."""
    impl: Literal["auto", "triton", "torch"] = "auto"
    """kernels implementation: auto = Triton on CUDA, torch elsewhere."""

    def __post_init__(self) -> None:
        if min(self.hidden_weight, self.attention_weight, self.embedding_weight, self.logit_weight,
               self.mlm_weight, self.pooled_weight, self.relation_weight) < 0:
            raise ValueError("loss weights must be >= 0")
        if self.attention_temperature <= 0 or self.temperature <= 0 or self.relation_temperature <= 0:
            raise ValueError("temperatures must be > 0")
        if self.relation_memory < 0:
            raise ValueError(f"relation_memory: must be >= 0, got {self.relation_memory}")


@dataclass
class DataConfig:
    """Training data: data_prep shards mixed across languages."""

    shards: str
    """A data_prep output folder (holding manifest.json), or where such a folder is served: a
    URL prefix webdataset's gopen opens (`https://host/shards`, `pipe:cat /mnt/shards`) or a
    template with `{}` for the relative path (`pipe:aws s3 cp s3://bucket/shards/{} -`)."""
    verify: Literal["none", "count", "sha256"] = "count"
    """How each shard is checked before any of its samples is used (a bad shard stops the run,
    naming it): count = whole tar structure + the manifest's sample count (free: the shard is
    read anyway); sha256 = also its hash, once per loader process before its first use (one
    SHA-256 pass over the bytes: ≈ 1 GB/s per core, negligible next to a GPU step; the way to
    catch a shard rewritten with the same count); none = structure only."""
    alpha: float = 0.7
    """Language sampling exponent: q_i ∝ p_i^α over token counts."""
    languages: list[str] = field(default_factory=list)
    """Use only these languages (empty: all in the manifest)."""
    micro_batch_size: int = 32
    """Sequences per rank per micro step; padded to the longest in the batch."""
    num_workers: int = 2
    """DataLoader worker processes per rank."""
    shuffle_buffer: int = 1000
    """Shuffle window: each epoch's order of a language is its shards in a seeded order, and
    every stream's slice of it is shuffled within windows of this many consecutive samples (a
    seeded bijection each, no table: any size costs no memory). A stream holds the shards its
    current window overlaps (about window + 2 shards of samples per language)."""
    group_by_length: int = 0
    """G > 1: sort the samples of G micro-batches by length and batch neighbours together (the
    batches then come in a seeded random order). Cuts padding on short, varied texts; no
    effect on packed data. 0 or 1: off."""
    parallel: bool = False
    """Use the translation pairs of the shards (data_prep's `input.parallel`, e.g. the demo's
    parallel.jsonl): every micro-batch then also holds `parallel_pairs` English sentences and
    one translation of each, so the sentence-level terms see translations side by side.
    Needs English among the training languages."""
    parallel_pairs: int = 8
    """Translation pairs added to each micro-batch with `parallel` (2 rows each)."""
    mlm_probability: float = 0.15
    """With loss.mlm_weight > 0: share of real tokens selected for MLM (80% [MASK], 10% random,
    10% kept), seeded like the data order."""
    reset_position: bool = False
    """On resume, start the data at a fresh epoch instead of the checkpoint's position. Needed
    only when the shards, run.seed, shuffle_buffer or the languages changed since the
    checkpoint (the resume stops and says so); another world size, worker count, micro-batch
    size or grad_accum needs nothing: the samples the epoch has left are re-split exactly."""

    def __post_init__(self) -> None:
        if self.micro_batch_size < 1 or self.num_workers < 0 or self.shuffle_buffer < 1 \
                or self.group_by_length < 0 or self.parallel_pairs < 1:
            raise ValueError("micro_batch_size, shuffle_buffer and parallel_pairs must be >= 1, "
                             "num_workers and group_by_length >= 0")
        if self.alpha < 0:
            raise ValueError(f"alpha: must be >= 0, got {self.alpha}")


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (the student only)."""

    lr: float = 1e-4
    """Peak learning rate."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to biases and LayerNorm weights)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    warmup_steps: int = 100
    """Linear warmup from 0 to lr."""
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    """Decay after warmup, to min_lr_ratio · lr at max_steps."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of lr."""
    grad_clip: float = 1.0
    """Gradient-norm clipping (0: off)."""
    optimizer: Literal["torch_adamw", "deepspeed_adam"] = "torch_adamw"
    """torch.optim.AdamW, or DeepSpeed's (Fused/CPU) Adam (compiled on first use)."""


@dataclass
class EngineConfig:
    """DeepSpeed engine settings (the ds_config is generated from these)."""

    zero_stage: int = 2
    """ZeRO stage 0–3 for the student."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Student training precision: auto = bf16 on GPU, fp32 on CPU."""
    grad_accum: int = 1
    """Micro steps per optimizer step."""
    offload_optimizer: bool = False
    """ZeRO-Offload of optimizer states to CPU (stages 1–3)."""
    param_persistence_threshold: int | None = None
    """ZeRO-3: parameters with fewer elements than this stay whole on every rank (DeepSpeed's
    stage3_param_persistence_threshold; None: its default, 1e5). 0 partitions every tensor."""

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage: must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum: must be >= 1, got {self.grad_accum}")
        if self.param_persistence_threshold is not None and self.param_persistence_threshold < 0:
            raise ValueError(f"param_persistence_threshold: must be >= 0, got {self.param_persistence_threshold}")


# A set's name becomes part of TensorBoard tags (`eval/<name>/retrieval/...`) and of checkpoint
# keys: plain identifiers only. "heldout" is eval.pairs' own set; "retrieval" would file a set's
# tags under the held-out set's `eval/retrieval/` group.
_SET_NAME_RE = re.compile(r"^[a-z0-9_]+$")
RESERVED_SET_NAMES = frozenset({"heldout", "retrieval"})


@dataclass
class EvalSetConfig:
    """One more held-out set for live evaluation (`eval.sets.<name>`): evaluated with eval.pairs,
    in the same pass, logged as `eval/<name>/retrieval/<lang>`, with its own drop guard."""

    pairs: str
    """Translation pairs of this set (JSONL, the format of eval.pairs). Required."""
    languages: list[str] = field(default_factory=list)
    """Only these languages of its file (empty: all it has)."""
    max_pairs: int | None = None
    """Pairs per language (None: eval.max_pairs)."""

    def __post_init__(self) -> None:
        if not self.pairs.strip():
            raise ValueError("pairs: must be a non-empty path")
        if self.max_pairs is not None and self.max_pairs < 1:
            raise ValueError(f"max_pairs: must be >= 1 (or null), got {self.max_pairs}")


@dataclass
class EvalConfig:
    """Live cross-lingual evaluation during training: the student's held-out retrieval in
    TensorBoard, and a guard against the failure a falling loss hides (a student can get worse
    at retrieval while its distillation loss falls: lightmbert/benchmarks/README.md, Findings)."""

    pairs: str = ""
    """Held-out translation pairs (JSONL {"en": text, "translations": {lang: text}}, e.g. the
    demo's heldout.jsonl; never the training pairs). Empty: off."""
    interval: int = 500
    """Evaluate every N optimizer steps, at step 0 (the "before" point, kept across restarts)
    and at the last step. Logged as `eval/retrieval/<lang>` and `eval/retrieval/mean`."""
    max_pairs: int = 100
    """Pairs per language (the first N of the file, both directions): the cost is
    2·N·languages sentences through the student, shared across ranks."""
    languages: list[str] = field(default_factory=list)
    """Only these languages of the pairs file (empty: all it has)."""
    prefix: str | None = None
    """Text put before every sentence (None: the shards' packing prefix, e.g. "query: ")."""
    batch_size: int = 64
    """Sentences per forward pass."""
    max_drop: float = 0.02
    """Alarm when the mean retrieval is more than this below the step-0 value ..."""
    patience: int = 2
    """... for this many evaluations in a row: a loud console message and `eval/alarm` = 1."""
    stop_on_drop: bool = False
    """On the alarm, also checkpoint and stop (exit code 4) instead of training on."""
    sets: dict[str, EvalSetConfig] = field(default_factory=dict)
    """More held-out sets, name ([a-z0-9_]+; not `heldout`, eval.pairs' own, nor `retrieval`)
    → {pairs, languages, max_pairs}, e.g. an out-of-domain one: encoded in the same pass as
    eval.pairs, logged as `eval/<name>/retrieval/<lang>` and `.../mean`, each with its own step-0
    baseline and drop guard (max_drop, patience); the alarm is raised when any set's guard
    raises it. A set first seen on a resume takes its baseline at its first evaluation, not at
    step 0."""

    def __post_init__(self) -> None:
        if self.interval < 1 or self.max_pairs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ValueError("interval, max_pairs, batch_size and patience must be >= 1")
        if self.max_drop < 0:
            raise ValueError(f"max_drop: must be >= 0, got {self.max_drop}")
        for name in self.sets:
            if not isinstance(name, str) or not _SET_NAME_RE.match(name):
                raise ValueError(f"sets: bad set name {name!r}: use lowercase letters, digits and _ "
                                 f"(it becomes the TensorBoard tag eval/<name>/retrieval/...)")
            if name in RESERVED_SET_NAMES:
                raise ValueError(f"sets: set name {name!r} is reserved ('heldout' is eval.pairs' own "
                                 f"set); choose another")

    @property
    def enabled(self) -> bool:
        """Live evaluation is on when there is any set to evaluate."""
        return bool(self.pairs or self.sets)


@dataclass
class DistillConfig:
    """`python -m lightmbert.trainer.distill`: one distillation run."""

    run: RunConfig
    teacher: TeacherConfig
    data: DataConfig
    student: StudentConfig = field(default_factory=StudentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
