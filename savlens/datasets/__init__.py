"""Load labelled examples: generic files and image folders, VLGuard / MHalu, offline data, few-shot splits.

Generic JSONL / JSON / CSV / TSV / parquet files, Hugging Face ``datasets`` objects (:func:`load_table`) and
class-named image folders; VLGuard and MHalu in the reference formats with the reference prompts; data that
installs offline (easy-VQA, Fashion-MNIST, fortunes); seeded stratified few-shot splits. Every loader returns a
list of :class:`savlens.example.Example`.
"""

from savlens.datasets._common import DEFAULT_MAX_TEXT_CHARS
from savlens.datasets.easyvqa import EASY_VQA_TASKS, load_easy_vqa
from savlens.datasets.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist, read_idx
from savlens.datasets.files import load_examples, read_records
from savlens.datasets.fortunes import FORTUNES_CATEGORIES, FORTUNES_PROMPT, load_fortunes, read_fortune_file
from savlens.datasets.reference import LABEL_KEYS, MHALU_PROMPT, VLGUARD_PROMPT, load_mhalu, load_vlguard
from savlens.datasets.split import Split, few_shot_split, image_disjoint_split, image_keys
from savlens.datasets.tables import load_table, read_parquet

__all__ = [
    "DEFAULT_MAX_TEXT_CHARS",
    "EASY_VQA_TASKS",
    "FASHION_MNIST_CLASSES",
    "FORTUNES_CATEGORIES",
    "FORTUNES_PROMPT",
    "LABEL_KEYS",
    "MHALU_PROMPT",
    "Split",
    "VLGUARD_PROMPT",
    "few_shot_split",
    "image_disjoint_split",
    "image_keys",
    "load_easy_vqa",
    "load_examples",
    "load_fashion_mnist",
    "load_fortunes",
    "load_mhalu",
    "load_table",
    "load_vlguard",
    "read_fortune_file",
    "read_idx",
    "read_parquet",
    "read_records",
]
