"""The main job: where does the ELBO lose to log p(x)? Amortization vs approximation gap.

    python -m experiments.gap --workdir runs/gap                 # digits, about 70 s on 2 CPU cores
    python -m experiments.gap --workdir runs/gap --quick         # smoke run, about 40 s
    python -m experiments.gap --checkpoint runs/train_vae        # use a trained VAE instead of training one
    python -m experiments.gap --workdir runs/gap --resume        # an interrupted run keeps its finished stages
    python -m experiments.gap --set protocol.ais_proposal=ffg    # also AIS from q*_FFG, ~40% longer
    python -m experiments.gap --set protocol.local_fit=accurate  # a named q* fit: reference (default), authors, accurate
    python -m experiments.gap --set local_families=gaussian,flow,iaf  # also an IAF q* (any registered family)

Trains an amortized VAE (or loads one), then on a seeded random subset of the training split
and of the test split (or its first rows where GapConfig says so) computes per datapoint:
L[q_phi] (encoder), L[q*] of each family in local_families (by default the diagonal Gaussian,
labelled "ffg", and the coupling flow, "flow"; fitted per datapoint with Adam until the 100-step
average ELBO stops improving for 10 checks), log p(x) (IWAE K=5000 with the fitted q* as
proposal, the larger over the families: log_px_iwae; with protocol.ais_proposal set, also AIS
from that proposal, log_px_ais (vi_jax.ais; 16 chains x 100 steps by default), and log p(x) is
the larger of the two per datapoint, as in Cremer et al. 2018), and the semi-amortized ELBO
after K refinement steps from the encoder's output. AIS is off by default: it adds about 40% to
the run time (its figures with 16 chains x 100 steps from q*_FFG: BENCHMARKS.md, "Figures no
reference checks").

Writes into --workdir (each file atomically, gap.json last): gap.json (per split: n_eval and
{"mean", "stderr"} of log_px, log_px_iwae (with AIS also log_px_ais, ais_acceptance_rate,
ais_step_size and the count log_px_from_ais), rows (the row choice, n, the split's size, the
subset key and the split's recorded order; the indices are gap_<split>.npz's rows),
elbo_amortized, and per local family label elbo_local_<label>, approximation_gap_<label>,
amortization_gap_<label>; inference_gap, semi_amortized curve; top level:
seed, local_fit_protocol (the named local fit that ran, or "custom"; its settings: config.protocol.local_fit),
config, environment, wall seconds of each stage), gap.md (the same as tables),
gap_bars.png, local_vs_amortized.png, refinement.png, gap_<split>.npz (per-datapoint arrays),
and vae_params.msgpack when it trained the VAE.

Expected figures: experiments/benchmark/references/quick.json (the --quick run; the default
run's figures are in BENCHMARKS.md, "Figures no reference checks"); check a fresh run against
them with
    python -m experiments.benchmark --only gap --no-peers --check experiments/benchmark/references/quick.json
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import ClassVar

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from vi_jax import plotting, provenance, rundir, storage
from vi_jax.checkpoint import StageCache, config_checksum, state_checksums
from vi_jax.config import Rule, check_fields, count, one_of
from vi_jax.data import ROW_CHOICES, subset
from vi_jax.families import FAMILIES, VariationalFamily, family_options, get_family
from vi_jax.gap import GapProtocol, evaluate_gaps, summarize
from vi_jax.vae import VAEConfig, build_vae, load_trained_vae, load_training_data, train_vae

from ._common import RESUME_STAGES, Cli, FieldFlag, progress_log

SPLITS = ("train", "test")
AIS_QUANTITIES = ("log_px_ais", "ais_acceptance_rate", "ais_step_size")  # with protocol.ais_proposal


def gaps(labels) -> tuple[str, ...]:
    """The inference gap, then the approximation and amortization gaps of each local family label."""
    return ("inference_gap",
            *(f"{gap}_{label}" for label in labels for gap in ("approximation_gap", "amortization_gap")))


def quantities(labels) -> tuple[str, ...]:
    """The reported quantities, for local families of these labels (in their order)."""
    return ("log_px", "log_px_iwae", "elbo_amortized", *(f"elbo_local_{label}" for label in labels), *gaps(labels))


@dataclasses.dataclass(frozen=True)
class GapConfig:
    """Which rows: each split's n_eval rows are `rows` ("random": a seeded random subset, key
    fold_in(fold_in(PRNGKey(seed), split index), 0); "first": the first n_eval), and the
    training split's are `train_rows` instead when it is set. Cremer et al. evaluate the first
    1000 training points (Larochelle's training file is in random order), and a held-out split
    must be a random subset: rows="random", train_rows="first". "first" on a split the dataset
    records as ordered (Dataset.ordered_splits, e.g. binarized MNIST's class-sorted test file)
    is an error, raised before any training or fitting."""

    seed: int = 0
    vae: VAEConfig = VAEConfig()
    checkpoint: str = ""  # a train_vae workdir to load instead of training
    n_eval: int = 300  # datapoints per split (digits' test split has 300)
    rows: str = "random"  # which n_eval rows of every split: "random" or "first"
    train_rows: str = ""  # the training split's choice instead of `rows` ("": as `rows`)
    splits: tuple[str, ...] = SPLITS  # which splits to evaluate (each with the same keys as in a full run)
    # the families fitted per datapoint (q*), by registry name; results name each by its label
    local_families: tuple[str, ...] = ("gaussian", "flow")
    flow_layers: int = 4  # num_layers and hidden of every local family that has them (the flows)
    flow_hidden: int = 16
    protocol: GapProtocol = GapProtocol()

    RULES: ClassVar[dict[str, Rule]] = {"seed": count(0), "n_eval": count(1), "rows": one_of(ROW_CHOICES),
                                        "train_rows": one_of(ROW_CHOICES + ("",)),
                                        "local_families": Rule(
                                            lambda v: isinstance(v, tuple) and 0 < len(v) == len(set(v))
                                            and all(name in FAMILIES for name in v),
                                            f"a non-empty tuple of distinct family names from {tuple(FAMILIES)}"),
                                        "flow_layers": count(1), "flow_hidden": count(1)}

    def rows_of(self, split: str) -> str:
        """The row choice for `split`: train_rows on the training split when set, else rows."""
        return self.train_rows if split == "train" and self.train_rows else self.rows

    def validate(self) -> None:
        check_fields(self, self.RULES)
        self.protocol.validate()
        if not self.splits or any(name not in SPLITS for name in self.splits):
            raise ValueError(f"splits must be a non-empty subset of {SPLITS}, got {self.splits}")
        # AIS starts from the prior, the encoder or a fitted family's q*, named by its label
        proposals = ("prior", "encoder", *build_local_families(self, latent_dim=2))
        if self.protocol.ais_proposal and self.protocol.ais_proposal not in proposals:
            raise ValueError(f"protocol.ais_proposal {self.protocol.ais_proposal!r} names no proposal of this "
                             f"config; known: {proposals}")


QUICK = ["vae.num_epochs=30", "n_eval=40", "protocol.local_fit.check_every=20", "protocol.local_fit.patience=5",
         "protocol.local_fit.max_steps=2000", "protocol.local_fit.learning_rate=3e-3", "protocol.elbo_samples=100",
         "protocol.iwae_samples=500", "protocol.refine_steps=0,1,5,20"]

CLI = Cli(__doc__, GapConfig, workdir="runs/gap", writes="gap.json", quick=QUICK, seed=("seed", "vae.seed"),
          flags=[FieldFlag("--checkpoint", "checkpoint", "a train_vae workdir whose VAE to evaluate")], data_dir=True,
          extra=[RESUME_STAGES],
          example="--set n_eval=100 --set vae.latent_dim=4 --set protocol.local_fit.learning_rate=1e-2")


def choose_rows(config: GapConfig, dataset, splits: dict) -> dict:
    """{split: (row indices, rows)} of each evaluated split, per config.rows_of(split); raises
    for rows="first" on a split that `dataset` records as ordered. Cheap: call it before training."""
    key = jax.random.PRNGKey(config.seed)
    return {name: subset(jax.random.fold_in(jax.random.fold_in(key, SPLITS.index(name)), 0), splits[name],
                         config.n_eval, config.rows_of(name), order=dataset.ordered_splits.get(name),
                         name=f"{dataset.name} {name}")
            for name in config.splits}


def build_local_families(config: GapConfig, latent_dim: int) -> dict[str, VariationalFamily]:
    """{label: family} of config.local_families, built by the registry; flow_layers and
    flow_hidden are the num_layers and hidden of the families that take them."""
    flow_options = {"num_layers": config.flow_layers, "hidden": config.flow_hidden}
    families = [get_family(name, latent_dim, **{k: v for k, v in flow_options.items() if k in family_options(name)})
                for name in config.local_families]
    return {family.label: family for family in families}


def markdown(result: dict) -> str:
    protocol = result["config"]["protocol"]
    log_px = f"IWAE K={protocol['iwae_samples']} with the fitted q* (log_px_iwae)"
    if protocol["ais_proposal"]:
        ais = protocol["ais"]
        log_px = (f"the larger of {log_px} and AIS from {protocol['ais_proposal']} (log_px_ais: "
                  f"{ais['num_chains']} chains, {ais['num_steps']} {ais['schedule']} steps, HMC with "
                  f"{ais['leapfrog_steps']} leapfrog steps), per datapoint")
    lines = ["# Gap decomposition", "",
             f"seed {result['seed']}; log p(x): {log_px}; nats per datapoint, mean ± standard error over datapoints.", ""]
    for split, r in result["splits"].items():
        lines += [f"## {split} split (n = {r['n_eval']})", "", "| quantity | mean | stderr |", "| --- | ---: | ---: |"]
        lines += [f"| {q} | {r[q]['mean']:.3f} | {r[q]['stderr']:.3f} |"
                  for q in quantities(r["local_fits"]) + AIS_QUANTITIES if q in r]
        if "log_px_from_ais" in r:
            lines += ["", f"log p(x) from AIS (AIS > IWAE) on {r['log_px_from_ais']} of {r['n_eval']} datapoints."]
        curve = r["semi_amortized"]
        lines += ["", "Semi-amortized: ELBO after K refinement steps from the encoder's output", "",
                  "| K | ELBO | stderr |", "| ---: | ---: | ---: |"]
        lines += [f"| {k} | {e['mean']:.3f} | {e['stderr']:.3f} |" for k, e in zip(curve["k"], curve["elbo"])]
        fits = r["local_fits"]
        fit_rule = f"{result['local_fit_protocol']} protocol, from the {protocol['local_init']}"
        lines += ["", f"Local fits ({fit_rule}): " + "; ".join(
            f"{name}: {f['converged']}/{f['n']} converged, median {f['median_steps']:.0f} steps"
            for name, f in fits.items()), ""]
    return "\n".join(lines)


def figures(result: dict, arrays: dict, workdir: str) -> None:
    plt = plotting.plt
    fig, axes = plt.subplots(1, len(arrays), figsize=(5 * len(arrays), 4), squeeze=False)
    for ax, (split, r) in zip(axes[0], result["splits"].items()):
        labels = list(r["local_fits"])
        names = gaps(labels)
        ax.bar(range(len(names)), [r[n]["mean"] for n in names], yerr=[2 * r[n]["stderr"] for n in names],
               color=["grey"] + ["C0", "C1"] * len(labels), hatch=None)
        ax.set_xticks(range(len(names)), ["inference", *(f"{gap}\n{label}" for label in labels
                                                         for gap in ("approx", "amort"))])
        ax.set_ylabel("nats (± 2 s.e.)")
        ax.set_title(f"{split} (n = {r['n_eval']})")
    storage.atomic_save_figure(fig, os.path.join(workdir, "gap_bars.png"))
    plotting.close(fig)

    fig, axes = plt.subplots(1, len(arrays), figsize=(5 * len(arrays), 4.5), squeeze=False)
    for ax, (split, a) in zip(axes[0], arrays.items()):
        for label in result["splits"][split]["local_fits"]:
            ax.scatter(a["elbo_amortized"], a[f"elbo_local_{label}"], s=6, label=f"q*_{label}")
        lo, hi = np.min(a["elbo_amortized"]), np.max(a["log_px"])
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
        ax.set_xlabel("L[q_phi] (encoder)")
        ax.set_ylabel("L[q*] (fitted per datapoint)")
        ax.set_title(split)
        ax.legend()
    storage.atomic_save_figure(fig, os.path.join(workdir, "local_vs_amortized.png"))
    plotting.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4))
    # refinement moves q within the encoder's family: its target line is that family's q*, if fitted
    labels = dict(zip(result["config"]["local_families"], next(iter(result["splits"].values()))["local_fits"]))
    own = labels.get(result["vae_config"]["family"])
    for split, r in result["splits"].items():
        curve = r["semi_amortized"]
        ks = np.array(curve["k"])
        ax.errorbar(ks + 0.5, [e["mean"] for e in curve["elbo"]], yerr=[2 * e["stderr"] for e in curve["elbo"]],
                    marker="o", label=f"{split}: refined ELBO")
        if own:
            ax.axhline(r[f"elbo_local_{own}"]["mean"], ls="--", lw=1, color=ax.lines[-1].get_color(),
                       label=f"{split}: L[q*_{own}]")
    ax.set_xscale("log")
    ax.set_xlabel("K + 0.5 (refinement steps)")
    ax.set_ylabel("ELBO (nats)")
    ax.legend(fontsize=8)
    storage.atomic_save_figure(fig, os.path.join(workdir, "refinement.png"))
    plotting.close(fig)


def stage_fingerprint(config: GapConfig, vae_config: VAEConfig, params, split: str, rows: np.ndarray) -> dict:
    """What one split's gap stages depend on (StageCache): the protocol, the model's parameters
    and the rows, and the backend and cores (a local fit's float rounding depends on the cores,
    LocalFitConfig.block_rows). The checkpoint path is left out: the parameters' checksums stand in."""
    return {"config": dataclasses.asdict(dataclasses.replace(config, checkpoint="")),
            "vae_config": dataclasses.asdict(vae_config), "split": split,
            "params": config_checksum(state_checksums(params)), "rows": np.asarray(rows).tolist(),
            "backend": jax.default_backend(), "cores": provenance.usable_cores()}


@rundir.staged
def run(config: GapConfig, workdir: str, *, data_dir: str | None = None, progress: bool = True,
        resume: bool = False) -> dict:
    """resume: keep the finished stages of an interrupted run of this config in this workdir
    (WORKDIR/checkpoints/gap_<split>), so that only the rest is computed; the results are the same."""
    log = progress_log(progress)
    config.validate()
    timings = {}
    start = time.perf_counter()
    if config.checkpoint:
        vae_config, vae, params = load_trained_vae(config.checkpoint)
        trained_here = False
    else:
        vae_config = config.vae
        vae_config.validate()
    dataset, train, test = load_training_data(vae_config, data_dir)
    splits = dict(zip(SPLITS, (train, test)))
    chosen = choose_rows(config, dataset, splits)  # before training: a refused row choice costs nothing
    if not config.checkpoint:
        log(f"training the amortized VAE ({vae_config.num_epochs} epochs on {vae_config.dataset})")
        vae = build_vae(vae_config, dataset.dim, len(splits["train"]) // vae_config.batch_size)
        params = train_vae(vae, vae_config, splits["train"], progress=progress,
                           metrics=rundir.live_path(workdir, "metrics.jsonl")).state.params
        trained_here = True
    timings["vae"] = time.perf_counter() - start

    local_families = build_local_families(config, vae_config.latent_dim)
    key = jax.random.PRNGKey(config.seed)
    result = {"splits": {}}
    arrays, caches = {}, []
    for name in config.splits:
        split_key = jax.random.fold_in(key, SPLITS.index(name))
        rows, x = chosen[name]
        log(f"[{name}] gap decomposition on {len(rows)} datapoints")
        amortized = vae.encode(params["encoder"], jnp.asarray(x))
        stages = StageCache(os.path.join(rundir.checkpoint_dir(workdir), f"gap_{name}"),
                            stage_fingerprint(config, vae_config, params, name, rows), resume=resume)
        caches.append(stages)
        per_point, info = evaluate_gaps(jax.random.fold_in(split_key, 1), vae.model, params["decoder"],
                                        vae.family, amortized, local_families, x, config.protocol, log, stages=stages)
        if info["reused_stages"]:
            log(f"[{name}] read back from the interrupted run: {', '.join(info['reused_stages'])}")
        reported = quantities(local_families) + (AIS_QUANTITIES if config.protocol.ais_proposal else ())
        summary = summarize({q: per_point[q] for q in reported})
        if config.protocol.ais_proposal:
            summary["log_px_from_ais"] = int(np.sum(per_point["log_px_ais"] > per_point["log_px_iwae"]))
        summary["n_eval"] = len(rows)
        summary["rows"] = {"choice": config.rows_of(name), "n": len(rows), "of": len(splits[name]),
                           "subset_key": f"fold_in(fold_in(PRNGKey({config.seed}), {SPLITS.index(name)}), 0)",
                           "split_order": dataset.ordered_splits.get(name), "indices": f"gap_{name}.npz: rows"}
        summary["semi_amortized"] = {"k": list(config.protocol.refine_steps),
                                     "elbo": [summarize({"e": per_point[f"elbo_refined_{k}"]})["e"]
                                              for k in config.protocol.refine_steps]}
        summary["local_fits"] = info["local_fits"]
        summary["resumed_stages"] = info["reused_stages"]
        result["splits"][name] = summary
        arrays[name] = {"rows": rows, **per_point}
        timings.update({f"{name}/{stage}": round(s, 2) for stage, s in info["seconds"].items()})
    timings["total"] = time.perf_counter() - start
    timings["vae"] = round(timings["vae"], 2)
    timings["total"] = round(timings["total"], 2)

    result.update({"seed": config.seed, "local_fit_protocol": config.protocol.local_fit.protocol_name(),
                   "config": dataclasses.asdict(config),
                   "vae_config": dataclasses.asdict(vae_config), "environment": provenance.environment(),
                   "wall_seconds": timings})
    for name, a in arrays.items():
        storage.atomic_save_npz(os.path.join(workdir, f"gap_{name}.npz"), **a)
    figures(result, arrays, workdir)
    if trained_here:
        storage.atomic_write_bytes(os.path.join(workdir, "vae_params.msgpack"), flax.serialization.to_bytes(params))
    storage.atomic_write_text(os.path.join(workdir, "gap.md"), markdown(result))
    storage.atomic_write_json(os.path.join(workdir, "gap.json"), result)
    for stages in caches:  # every result is written: the finished stages have served
        stages.discard()
    with contextlib.suppress(OSError):  # unless it holds other checkpoints
        os.rmdir(rundir.checkpoint_dir(workdir))
    return result


main = CLI.main(run, report=markdown)


if __name__ == "__main__":
    main()
