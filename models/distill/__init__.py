"""The HLM training phases.

- phase 1 (optional): fine-tune the teacher on judged train pairs (``teacher_finetune``)
- phase 2: L2 alignment of the student's query vectors to the teacher's (``train``, objective "l2")
- phase 3: contrastive refinement against the frozen teacher keyword vectors, with a share
  of the L2 term kept (``train``, objective "contrastive")

``students`` makes the student architectures, ``losses`` holds the objectives,
``checkpoint`` saves and loads trained students for ``hlm build --student-checkpoint``.
"""
