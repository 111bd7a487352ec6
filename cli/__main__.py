"""`python -m rlhf_interp.cli` (what `rlhf-interp train --nproc N` hands to torchrun)."""

from rlhf_interp.cli.app import main

main()
