"""Train one decoder per inference mode at a matched budget and evaluate all with one protocol.

    python -m experiments.compare_training --workdir runs/compare           # digits, a few minutes
    python -m experiments.compare_training --workdir runs/compare --quick

Modes: amortized (encoder), non_amortized (a q_i per training datapoint, trained jointly with
the decoder), semi_amortized (encoder output refined by K steps). Same seed, so the same decoder
initialisation, the same minibatch order and the same number of steps. Each decoder is then
evaluated with the gap protocol (vi_jax.gap) on a seeded subset of the training split and of
the test split: log p(x) (IWAE with the fitted q*), L[q*_FFG], the approximation gap, and for
the q the mode trained with (encoder, or the q_i table on training points) its ELBO and the
amortization gap.

Writes compare.json, compare.md (one table) and compare_<mode>_<split>.npz, atomically, and while
each mode trains, its metrics_<mode>.jsonl (vi_jax.metrics).
"""
from __future__ import annotations

import dataclasses
import os
from typing import ClassVar

import jax
import jax.numpy as jnp

from vi_jax import rundir, storage
from vi_jax.config import Rule, check_fields, count
from vi_jax.data import subset
from vi_jax.gap import GapProtocol, evaluate_gaps, summarize
from vi_jax.local import take_rows
from vi_jax.vae import TRAINING_MODES, VAEConfig, build_vae, load_training_data, train_vae

from ._common import Cli, header, progress_log, write_report

COLUMNS = ("log_px", "elbo_local_ffg", "approximation_gap_ffg", "elbo_amortized", "amortization_gap_ffg")


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    seed: int = 0
    vae: VAEConfig = VAEConfig(eval_every=0)
    modes: tuple[str, ...] = TRAINING_MODES
    n_eval: int = 200
    protocol: GapProtocol = GapProtocol(refine_steps=(0,))

    RULES: ClassVar[dict[str, Rule]] = {
        "seed": count(0), "n_eval": count(1),
        "modes": Rule(lambda v: isinstance(v, tuple) and len(v) > 0 and set(v) <= set(TRAINING_MODES),
                      f"a non-empty tuple of modes from {TRAINING_MODES}")}

    def validate(self) -> None:
        """Raise ValueError naming the first bad option (before any work is done)."""
        check_fields(self, self.RULES)
        for mode in self.modes:
            dataclasses.replace(self.vae, mode=mode).validate()
        self.protocol.validate()


QUICK = ["vae.num_epochs=10", "n_eval=20", "protocol.local_fit.check_every=20", "protocol.local_fit.patience=5",
         "protocol.local_fit.max_steps=2000", "protocol.local_fit.learning_rate=3e-3",
         "protocol.elbo_samples=100", "protocol.iwae_samples=200"]

CLI = Cli(__doc__, CompareConfig, workdir="runs/compare", writes="compare.json", quick=QUICK,
          seed=("seed", "vae.seed"), data_dir=True, example="--set vae.num_epochs=50 --set modes=amortized")


def markdown(result: dict) -> str:
    lines = ["# Training modes at a matched budget", "",
             f"seed {result['seed']}; {result['config']['vae']['num_epochs']} epochs each; nats per datapoint, "
             "mean ± standard error. elbo_amortized is the ELBO of the q the mode trained with "
             "(encoder; the q_i table for non_amortized on training points).", "",
             "| mode | split | train s | " + " | ".join(COLUMNS) + " |",
             "| --- | --- | ---: | " + " | ".join("---:" for _ in COLUMNS) + " |"]
    for mode, by_split in result["modes"].items():
        for split, r in by_split["splits"].items():
            cells = [f"{r[c]['mean']:.2f} ± {r[c]['stderr']:.2f}" if c in r else "n/a" for c in COLUMNS]
            lines.append(f"| {mode} | {split} | {by_split['train_seconds']:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@rundir.staged
def run(config: CompareConfig, workdir: str, *, data_dir: str | None = None, progress: bool = True) -> dict:
    config.validate()
    log = progress_log(progress)
    dataset, train, test = load_training_data(config.vae, data_dir)
    splits = {"train": train, "test": test}
    key = jax.random.PRNGKey(config.seed)
    rows = {name: subset(jax.random.fold_in(key, i), x, config.n_eval)[0] for i, (name, x) in enumerate(splits.items())}
    result = {"modes": {}}
    arrays = {}
    for mode in config.modes:
        vae_config = dataclasses.replace(config.vae, mode=mode)
        log(f"[{mode}] training for {vae_config.num_epochs} epochs")
        vae = build_vae(vae_config, dataset.dim, len(splits["train"]) // vae_config.batch_size,
                        num_train=len(splits["train"]))
        trained = train_vae(vae, vae_config, splits["train"], progress=progress,
                            metrics=rundir.live_path(workdir, f"metrics_{mode}.jsonl"))
        params = trained.state.params
        result["modes"][mode] = {"train_seconds": round(trained.seconds, 2), "splits": {}}
        for i, (split, x_all) in enumerate(splits.items()):
            x = jnp.asarray(x_all)[rows[split]]
            if vae.encoder is not None:
                q, init = vae.encode(params["encoder"], x), "encoder"
            elif split == "train":
                q, init = take_rows(params["local"], rows[split]), "encoder"  # start q* from the trained q_i
            else:
                q, init = None, "prior"
            protocol = dataclasses.replace(config.protocol, local_init=init)
            log(f"[{mode}] gap protocol on {len(x)} {split} datapoints")
            per_point, info = evaluate_gaps(jax.random.fold_in(key, 10 + i), vae.model, params["decoder"],
                                            vae.family, q, {"ffg": vae.family}, x, protocol, log)
            per_point.pop("elbo_refined_0", None)
            per_point.pop("inference_gap", None)
            result["modes"][mode]["splits"][split] = {"n_eval": len(x), "local_init": init,
                                                      **summarize(per_point), "local_fits": info["local_fits"]}
            arrays[f"{mode}_{split}"] = per_point
    result.update(header(config))
    for name, a in arrays.items():
        storage.atomic_save_npz(os.path.join(workdir, f"compare_{name}.npz"), **a)
    return write_report(workdir, "compare", result, markdown(result))


main = CLI.main(run, report=markdown)


if __name__ == "__main__":
    main()
