"""Why do RNNs forget? The copy task (output at step t the symbol read at t − lag) trained for
RNN, GRU, LSTM and a Transformer of about the same number of parameters (:data:`WIDTHS`) at
growing lags, and the norm of the gradient of the last
prediction's loss with respect to each input embedding against its distance from the loss
(:func:`attnlab.viz.gradients.gradient_norms`), at initialisation and after training.

The copy task is a task of the one engine (:class:`CopyTask`, :data:`SPEC`): every arm is a run
of :func:`attnlab.runs.train`, its batches drawn from (seed, epoch, step), so a cut arm
resumes exactly.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, replace
from statistics import fmean as mean

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.experiments.base import Context, Experiment, Result
from attnlab.experiments.numbers import final_val, mean_std, pm, spread_note
from attnlab.experiments.rules import Arm, Comparison, Metric, Rule, RuleChange, canonical
from attnlab.models.capabilities import LanguageModel
from attnlab.tasks import TaskSpec, register_spec
from attnlab.train.config import TrainConfig, opt, positive_int
from attnlab.train.sampler import Plan
from attnlab.viz.gradients import copy_batch, gradient_norms, plot_copy_accuracy, plot_gradient_norms

ORDER = 8
KINDS = ("rnn", "gru", "lstm", "transformer")


@dataclass
class CopyDataConfig:
    """The copy task: sequences of ``lag + outputs`` random symbols; the last ``outputs``
    positions must output the symbol read ``lag`` steps before."""

    lag: int = opt(10, "steps between reading a symbol and outputting it", positive_int, metavar="N")
    outputs: int = opt(20, "scored positions per sequence", positive_int, metavar="N")
    symbols: int = opt(8, "alphabet size (chance = 1/symbols)", positive_int, metavar="N")
    steps_per_epoch: int = opt(100, "optimizer steps per epoch (fresh random sequences each step)", positive_int,
                               metavar="N")
    eval_size: int = opt(512, "sequences in the fixed evaluation set", positive_int, metavar="N")


class CopyTask:
    """The engine's Task: cross-entropy on the scored positions, accuracy on them."""

    name = "copy"
    main_metric = "acc"
    metric_label = "copy accuracy"
    metric_percent = True

    def __init__(self, dc: CopyDataConfig) -> None:
        self.dc = dc
        self.eval_set = copy_batch(dc.eval_size, dc.lag, dc.outputs, dc.symbols, torch.Generator().manual_seed(12345))

    def steps_per_epoch(self, plan: Plan) -> int:
        return self.dc.steps_per_epoch

    def train_batches(self, plan: Plan):
        d = self.dc
        for s in range(plan.start_step, d.steps_per_epoch):
            x, y = copy_batch(plan.batch_size, d.lag, d.outputs, d.symbols, torch.Generator().manual_seed(plan.step_seed(s)))
            yield [(xj[plan.rank::plan.world_size], yj[plan.rank::plan.world_size])
                   for xj, yj in zip(x.tensor_split(plan.accum_steps), y.tensor_split(plan.accum_steps))]

    def _sums(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        out = model(x)  # recurrent models: (logits, state), each sequence from the zero state
        logits = (out[0] if isinstance(out, tuple) else out).float()  # (B, T, V)
        keep = y != -100
        loss = F.cross_entropy(logits[keep], y[keep])
        n = keep.sum()
        return loss, {"loss": loss.detach() * n, "count": n.float(),
                      "correct": (logits[keep].argmax(-1) == y[keep]).sum().float()}

    def train_step(self, model: nn.Module, batch, cfg: TrainConfig):
        return self._sums(model, *batch)

    def eval_batches(self, plan: Plan):
        x, y = self.eval_set
        for idx in torch.arange(plan.rank, len(x), plan.world_size).split(256):
            yield x[idx], y[idx]

    @torch.no_grad()
    def eval_step(self, model: nn.Module, batch, cfg: TrainConfig | None = None) -> dict[str, Tensor]:
        return self._sums(model, *batch)[1]

    def summarize(self, sums: dict[str, Tensor]) -> dict[str, float]:
        n = max(float(sums.get("count", torch.tensor(0.0))), 1.0)
        return {"loss": float(sums["loss"]) / n, "acc": float(sums["correct"]) / n}

    def record(self) -> dict:
        return {"copy": asdict(self.dc)}


@dataclass
class CopyData:
    config: CopyDataConfig
    title: str
    model_fields: dict

    def describe(self) -> str:
        d = self.config
        return f"copy task, lag {d.lag}, {d.outputs} outputs, {d.symbols} symbols"

    def write_files(self, run_dir) -> None:
        pass


def load_data(dc: CopyDataConfig, mcfg=None, run_dir=None, progress: bool = True, model_name: str = "") -> CopyData:
    return CopyData(dc, f"{model_name} on the copy task (lag {dc.lag})",
                    {"vocab_size": dc.symbols, "max_len": dc.lag + dc.outputs})


SPEC = register_spec(TaskSpec(name="copy", help="the copy task (experiments only)", data_config=CopyDataConfig,
                              load_data=load_data, make_task=lambda data, model, cfg: CopyTask(data.config),
                              model_kinds=(LanguageModel,)), __name__)

#: Registry models and their overrides: one recurrent layer of ``width``, or a 2-layer Transformer.
MODELS = {"rnn": "rnn_lm_small", "gru": "gru_lm_small", "lstm": "lstm_lm_small", "transformer": "transformer_lm_char"}
#: Widths that give the four models about the same number of parameters (the question is the path
#: a gradient takes, not the size): about the LSTM's at width 36 (11.2k, quick) or 64 (34.3k,
#: full), within 7%; the Transformer's learned positions grow with the lag (:func:`parameters`).
WIDTHS = {"quick": {"rnn": 70, "gru": 42, "lstm": 36, "transformer": 20},
          "full": {"rnn": 128, "gru": 74, "lstm": 64, "transformer": 36}}


#: The arms that test why the gated cells copy worse than the plain RNN in 600 steps (the proposed cause: a gate must
#: learn to hold its state, and that takes steps): label -> (model, extra model args, times the steps). The forget
#: gate's bias at 1 (Gers et al. 2000; Jozefowicz et al. 2015) holds the state from the first step; three times the
#: steps gives every recurrent model, the plain RNN too, the time to learn it.
CAUSES = {"lstm, forget bias 1": ("lstm", {"forget_bias": 1.0}, 1), "rnn, 3x steps": ("rnn", {}, 3),
          "gru, 3x steps": ("gru", {}, 3), "lstm, 3x steps": ("lstm", {}, 3)}


def cause_tag(extra: dict, times: int) -> str:
    return "fb1" if extra.get("forget_bias") == 1.0 else f"x{times}"


def model_args(kind: str, width: int) -> dict:
    if kind == "transformer":
        return {"d_model": width, "num_layers": 2, "num_heads": 4, "position": "learned"}
    return {"embed_dim": width, "hidden_dim": width, "num_layers": 1}


def span(values: list[int]) -> str:
    """'34,312', or '33,300-36,720' when the values differ."""
    lo, hi = min(values), max(values)
    return f"{lo:,}" if lo == hi else f"{lo:,}-{hi:,}"


def parameters(kind: str, width: int, dc: CopyDataConfig) -> int:
    """The parameters of ``kind`` at ``width`` on the copy task ``dc`` (built on the meta device)."""
    from attnlab.models.registry import probe_model

    model = probe_model(MODELS[kind], vocab_size=dc.symbols, **model_args(kind, width),
                        **({"max_len": dc.lag + dc.outputs} if kind == "transformer" else {}))
    return sum(p.numel() for p in model.parameters())


def last_loss_windows(dc: CopyDataConfig, n: int) -> Tensor:
    """(n, T + 1) windows for gradient_norms: the inputs, then the target of the last position
    (the symbol read ``lag`` steps before it)."""
    x, _ = copy_batch(n, dc.lag, dc.outputs, dc.symbols, torch.Generator().manual_seed(777))
    t = x.shape[1]
    return torch.cat([x, x[:, t - 1 - dc.lag : t - dc.lag]], 1)


def run(ctx: Context) -> Result:
    lags = ctx.pick([2, 6], [5, 10, 20, 50, 100])
    widths = WIDTHS[ctx.budget]
    steps, epochs = ctx.pick(10, 100), ctx.pick(1, 6)
    train = dict(epochs=epochs, batch_size=32, lr=3e-3, min_lr=1e-5, warmup_steps=20, weight_decay=0.0, clip_grad=1.0,
                 log_every=20)
    acc: dict[str, list[list[float]]] = {k: [] for k in KINDS}
    trained: dict[str, nn.Module] = {}
    for kind in KINDS:
        for lag in lags:
            dc = CopyDataConfig(lag=lag, outputs=ctx.pick(10, 20), steps_per_epoch=steps, eval_size=ctx.pick(128, 512))
            runs = [ctx.train_arm(f"{kind}-lag{lag}", SPEC, dc, train, MODELS[kind], model_args(kind, widths[kind]),
                                  seed=s) for s in ctx.seeds]
            acc[kind].append([final_val(r, "acc") for r in runs])
            trained[kind] = runs[0]["model"]  # the longest lag's model, seed 0
    # the arms testing the proposed cause of the gated cells' shortfall: gates must learn to hold their state
    cause_acc: dict[str, list[list[float]]] = {c: [] for c in CAUSES}
    for label, (kind, extra, times) in CAUSES.items():
        for lag in lags:
            dc = CopyDataConfig(lag=lag, outputs=ctx.pick(10, 20), steps_per_epoch=steps, eval_size=ctx.pick(128, 512))
            runs = [ctx.train_arm(f"{kind}-{cause_tag(extra, times)}-lag{lag}", SPEC, dc,
                                  {**train, "epochs": times * epochs}, MODELS[kind],
                                  {**model_args(kind, widths[kind]), **extra}, seed=s) for s in ctx.seeds]
            cause_acc[label].append([final_val(r, "acc") for r in runs])
    # gradient norm against distance, at initialisation (every seed) and after training at the longest lag (seed 0),
    # in float64: through 100 recurrent steps it falls below float32's range
    dc = CopyDataConfig(lag=lags[-1], outputs=ctx.pick(10, 20))
    windows = last_loss_windows(dc, ctx.pick(32, 256))
    init = {kind: [init_gradients(kind, widths[kind], dc, windows, s) for s in ctx.seeds] for kind in KINDS}
    params = {kind: [parameters(kind, widths[kind], CopyDataConfig(lag=lag, outputs=dc.outputs)) for lag in lags]
              for kind in KINDS}
    grads = {"init": {k: v[0] for k, v in init.items()},
             "trained": {k: gradient_norms(copy.deepcopy(trained[k]).double(), windows).tolist() for k in KINDS}}

    near, longest = lags[len(lags) // 2 - 1], lags[-1]  # two distances at which to read the gradient's decay
    ratio = {k: {d: grads["init"][k][d] / grads["init"][k][0] for d in (near, longest)} for k in KINDS}
    table = [{"model": k, "width": widths[k], "parameters": span(params[k]),
              **{f"lag {lag} acc %": pm(a, 1, 100) for lag, a in zip(lags, acc[k])},
              **{f"‖grad‖ at distance {d} / at 0 (init)": f"{ratio[k][d]:.2e}" for d in (near, longest)}}
             for k in KINDS]
    table += [{"model": label, "width": widths[kind], "parameters": span(params[kind]),
               **{f"lag {lag} acc %": pm(a, 1, 100) for lag, a in zip(lags, cause_acc[label])},
               **{f"‖grad‖ at distance {d} / at 0 (init)": "—" for d in (near, longest)}}
              for label, (kind, _, _) in CAUSES.items()]
    mean_acc = {k: [mean_std(a)[0] for a in acc[k]] for k in KINDS}
    figs = {
        "copy_accuracy": plot_copy_accuracy(mean_acc, lags, symbols=dc.symbols,
                                            subtitle=f"{epochs * steps} steps of batch 32, parameters matched "
                                                     f"(≈{params['lstm'][0]:,}); mean of {len(ctx.seeds)} seed(s)"),
        "gradient_vs_distance_init": plot_gradient_norms({k: torch.tensor(v) for k, v in grads["init"].items()},
                                                         title="Gradient reach at initialisation",
                                                         subtitle=f"copy sequences of {dc.lag + dc.outputs} steps"),
        "gradient_vs_distance_trained": plot_gradient_norms({k: torch.tensor(v) for k, v in grads["trained"].items()},
                                                            title=f"Gradient reach after training at lag {lags[-1]}",
                                                            subtitle="the loss of the last position needs the symbol "
                                                                     f"{lags[-1]} steps back"),
    }
    chance = 1 / dc.symbols
    solved = {k: [lag for lag, a in zip(lags, mean_acc[k]) if a > 0.9] for k in KINDS}
    failed = {k: [lag for lag, a in zip(lags, mean_acc[k]) if a < chance + 0.1] for k in KINDS}
    reading = (
        "Copy accuracy (>90%: solved; within 10 points of chance: failed): "
        + "; ".join(f"{k} solves lags {solved[k] or 'none'}, fails {failed[k] or 'none'}" for k in KINDS)
        + ". At initialisation (seed 0, float64) the gradient reaching back, relative to the gradient at distance 0: "
        + ", ".join(f"{k} {ratio[k][near]:.1e} at {near} and {ratio[k][longest]:.1e} at {longest} steps" for k in KINDS)
        + f". Averaged over the lags, copy accuracy is {', '.join(f'{k} {100 * mean(mean_acc[k]):.1f}%' for k in KINDS)} "
        + f"after {epochs * steps} steps; "
        + ", ".join(f"{c} {100 * mean(mean_std(a)[0] for a in cause_acc[c]):.1f}%" for c in CAUSES)
        + f" (3x: {3 * epochs * steps} steps). Parameters: "
        + ", ".join(f"{k} {span(params[k])}" for k in KINDS)
        + f" (widths {', '.join(f'{k} {widths[k]}' for k in KINDS)}). {spread_note(len(ctx.seeds))}.")
    data = {"accuracy": acc, "gradient_norms": grads, "lags": lags, "parameters": params,
            "mean_accuracy": {k: [mean(a[i] for a in acc[k]) for i in range(len(ctx.seeds))] for k in KINDS},
            "cause_accuracy": cause_acc,
            "cause_mean_accuracy": {c: [mean(a[i] for a in cause_acc[c]) for i in range(len(ctx.seeds))] for c in CAUSES},
            "gradient_reach_log10": {k: [math.log10(g[longest] / g[0]) if g[longest] > 0 else float("-inf")
                                         for g in init[k]] for k in KINDS}}
    return Result(table, reading, figs, data,
                  {"lags": lags, "widths": widths, "train": train, "steps": epochs * steps, "models": MODELS,
                   "gradients": "float64"})


def init_gradients(kind: str, width: int, dc: CopyDataConfig, windows: Tensor, seed: int) -> list[float]:
    """‖∂loss/∂x_{T−1−d}‖ against d for a fresh model of ``kind`` (seed ``seed``), in float64."""
    from attnlab.models.registry import create_model

    torch.manual_seed(seed)
    fresh = create_model(MODELS[kind], vocab_size=dc.symbols, **model_args(kind, width),
                         **({"max_len": dc.lag + dc.outputs} if kind == "transformer" else {}))
    return gradient_norms(fresh.double(), windows).tolist()


def _gated(kind: str) -> Comparison:
    return Comparison(Metric("copy accuracy averaged over the lags", "higher"),
                      Arm(kind, ("mean_accuracy", kind)), Arm("rnn", ("mean_accuracy", "rnn")), ">",
                      paper="Hochreiter & Schmidhuber 1997: LSTM bridges lags of over 1000 steps where an RNN fails")


def _cause(label: str, against: str, path: tuple) -> Comparison:
    return Comparison(Metric("copy accuracy averaged over the lags", "higher"),
                      Arm(label, ("cause_mean_accuracy", label)), Arm(against, path), ">",
                      paper="the cause test of the gated-cell comparisons: Hochreiter & Schmidhuber 1997 again, with the "
                            "forget gate open from the start (Jozefowicz et al. 2015) or three times the steps for all")


RULE = Rule(
    claim="the gradient through a recurrence is a product of Jacobians and vanishes geometrically with distance; "
          "LSTM/GRU gates bridge longer lags; self-attention connects any two positions in one step",
    source="Bengio et al. 1994 and Pascanu et al. 2013 (vanishing gradients); Hochreiter & Schmidhuber 1997 (LSTM); "
           "Vaswani et al. 2017, Table 1 (maximum path length O(1) for self-attention, O(n) for a recurrent layer)",
    figure="Table 1: path length O(1) vs O(n); recurrent gradients vanish with distance; gates bridge long lags",
    comparisons=(
        Comparison(Metric("copy accuracy at the longest lag (100 at full budget, 6 at quick)", "higher"),
                   Arm("transformer", ("accuracy", "transformer", -1)), Arm("rnn", ("accuracy", "rnn", -1)), ">",
                   paper="Table 1: any two positions one attention step apart"),
        Comparison(Metric("log10 ‖∂loss/∂x at distance d‖ / ‖∂loss/∂x at distance 0‖ at initialisation, d = the "
                          "longest lag", "higher"),
                   Arm("transformer", ("gradient_reach_log10", "transformer")),
                   Arm("rnn", ("gradient_reach_log10", "rnn")), ">",
                   paper="Bengio et al. 1994, Pascanu et al. 2013: geometric decay through the recurrence"),
        _gated("lstm"),
        _gated("gru"),
        _cause("lstm, forget bias 1", "rnn", ("mean_accuracy", "rnn")),
        _cause("lstm, 3x steps", "rnn, 3x steps", ("cause_mean_accuracy", "rnn, 3x steps")),
        _cause("gru, 3x steps", "rnn, 3x steps", ("cause_mean_accuracy", "rnn, 3x steps")),
    ),
)

HISTORY = (
    RuleChange(
        fingerprint=None,
        rule="“Agrees” when the Transformer solves the longest lag (>90%), the plain RNN does not, and the RNN's "
             "gradient ratio at the longest distance (initialisation) is below the Transformer's; the gated cells were "
             "not judged.",
        verdict="“This agrees with the anchor” on the first full run (2026-12-03 09:38 UTC, 2 seeds).",
        reason="Revised after that run (commit fb76c88, 09:52 UTC): the gradient read at two distances, all three "
               "recurrent ratios required below 10⁻³ of the Transformer's, and a sentence saying that the gated cells do "
               "not beat the plain RNN; rerun on the same arms it still agreed “on the main point”. Replaced by the rule "
               "above (issue 21), which judges the gated cells too.",
        date="2026-12-03"),
    RuleChange(
        fingerprint="2d80406e2f9c9d45",
        rule=canonical(replace(RULE, comparisons=RULE.comparisons[:4])),  # the rule above without the cause tests
        verdict="disagrees (session 6, 3 seeds: the Transformer comparisons agree; copy accuracy averaged over the lags, "
                "GRU 36.5% and LSTM 31.9% against the RNN's 54.1%, disagree)",
        reason="Issue 21, point 6: a result that disagrees with its paper gets the arms that test the proposed cause "
               "(gates must learn to hold their state, which 600 steps do not allow): an LSTM with its forget gate's "
               "bias at 1, and the RNN, GRU and LSTM with three times the steps. The first four comparisons are unchanged.",
        date="2026-12-07"),
)

EXPERIMENT = Experiment(
    name="rnn-forgetting",
    question="Why do RNNs forget? Copy accuracy against lag and gradient norm against distance",
    anchor="Bengio et al. 1994 and Pascanu et al. 2013: the gradient through a recurrence is a product of Jacobians and "
           "vanishes geometrically with distance; LSTM/GRU gates (Hochreiter & Schmidhuber 1997) bridge longer lags; "
           "self-attention connects any two positions in one step (Vaswani et al. 2017, Table 1: path length O(1))",
    cost={"quick": "≈25 s", "full": "≈50 min (4 models x 5 lags x 3 seeds, and the cause arms: an LSTM with forget "
                                    "bias 1, the recurrent models at 3x the steps)"},
    seeds={"quick": 1, "full": 3},
    run=run,
    rule=RULE,
    history=HISTORY,
    # the model and the lag; the Transformer's learned positions cover lag + outputs (model.max_len)
    # the cause arms add the forget gate's bias and the number of epochs (and so of steps)
    variables=("model.name", "data.lag", "model.max_len", "model.forget_bias", "train.epochs", "steps"),
)
