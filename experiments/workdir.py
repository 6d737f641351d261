"""Check a run's workdir against its manifest, or adopt an older version's finished run.

    python -m experiments.workdir verify runs/cremer_ffg   # every file against MANIFEST.json
    python -m experiments.workdir adopt runs/cremer_ffg    # a run written before manifests:
                                                           # checks it, then writes MANIFEST.json

The rules are vi_jax.rundir's (verify, adopt); adopt checks the files a VAE run leaves
(vi_jax.vae.check_legacy_workdir). The command lives here, not in vi_jax.rundir, because it needs
the VAE application and the VAE depends on vi_jax.rundir.
"""
from __future__ import annotations

import argparse

from vi_jax import rundir
from vi_jax.vae import check_legacy_workdir


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("verify", "adopt"))
    parser.add_argument("workdir")
    args = parser.parse_args(argv)
    try:
        if args.command == "verify":
            manifest = rundir.verify(args.workdir)
        else:
            manifest = rundir.adopt(args.workdir, check_legacy_workdir)
    except (OSError, ValueError) as err:  # the message names the file; a traceback adds nothing
        parser.exit(1, f"{err}\n")
    print(f"{args.workdir}: {manifest['status']} run, {len(manifest['files'])} files verified")


if __name__ == "__main__":
    main()
