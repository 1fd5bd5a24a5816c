"""The extraction that tests/test_faults.py runs in forked children and kills with SIGKILL.

Kept importable without side effects: the forkserver imports it once (with torch and savlens), and each child
builds its model after the fork, with one torch thread, so the children start in milliseconds.
"""

N_EXAMPLES = 40
BATCH_SIZE = 2
MODEL_ID = "tiny-llama-faults"


def examples() -> list:
    import savlens

    words = ["what color is the circle ?", "is there a red shape ?", "how many shapes are in the picture ?"]
    return [
        savlens.Example(words[i % 3] + " and the square" * (i % 5), label=["yes", "no"][i % 2], id=f"q{i:03d}")
        for i in range(N_EXAMPLES)
    ]


def model():  # type: ignore[no-untyped-def]
    import torch

    import savlens
    from savlens.testing.tiny import build_tiny

    torch.set_num_threads(1)
    tm = build_tiny("llama")
    return savlens.wrap(tm.model, tm.processor, model_id=MODEL_ID)


def extract_into(store: str) -> None:
    """Run the whole extraction into ``store`` (resuming whatever is there)."""
    import savlens

    savlens.extract(model(), examples(), batch_size=BATCH_SIZE, store=store, progress=False)
