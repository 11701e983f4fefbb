"""Evaluation: rolling policies out, scoring them, and what is made of the scores.

``rollout`` steps every episode of every task together through one batched environment;
``records`` turns episodes into per-task statistics, a record per method and seed (the
``runs/*.json`` files) and summaries over seeds; ``tables`` and ``figures`` present them; and
``report`` writes a comparison's results files. ``cmt compare``, the evaluate stage and the
report stage all use these.
"""
