"""The translation task: parallel data, sentencepiece, token-budget batches, the Transformer
(or the RNN baseline), sacreBLEU evaluation and the ``translate`` command.
"""

from tasks.translation.config import TranslationConfig
from tasks.translation.task import TranslationTask
from tasks.translation.translator import Translator

__all__ = ["TranslationConfig", "TranslationTask", "Translator"]
