"""The evaluation harness behind `nessa eval`: one run, every system, every condition,
one table per protocol (``harness.evaluate``).

What is compared (all in the same run, on the same trials):

* ``enroll_sym``   the enrollment model on both sides (the ceiling);
* ``runtime_sym``  the runtime model on both sides (what the light model manages alone);
* ``anchor_logit`` the anchor baseline: each side is represented by its cosine scores
  against a fixed set of anchor speakers (each model scores the anchors with its own
  embeddings of their utterances); the score vectors are mean-centred (each by its own
  mean, so the cosine between them is a Pearson correlation) and compared by cosine;
* ``ridge``, ``cca`` linear alignments fitted in-run with ``nessa.lab.linear`` on the anchor
  corpus' paired chunk embeddings (the data and chunking of the shipped alignment; the
  regularisation is chosen on a held-out speaker split exactly as ``nessa.lab.train`` does,
  then refitted on every speaker); cross-model score only;
* ``<artifact>``, ``<artifact>+fused`` every artifact given, scored as the service scores
  it (``AlignmentArtifact.scorer``): profiles without a runtime vector (the calibrated
  cross-model score) and with one (its fusion with the symmetric runtime cosine); both
  have a decision threshold;
* any extra ``System`` passed in, e.g. a speaker-adapted one built with
  ``systems.adapted_system`` (the hook for systems that learn from a profile's own
  utterances).

Asymmetric systems only ever see enrollment-model embeddings of the enrollment side and
runtime-model embeddings of the test side.

Conditions: the test side at full length and as crops of the speech (after Silero VAD)
at a seeded random offset, optionally with additive white or babble noise at a given SNR
(the enrollment side always stays clean and full length). Protocols:

* ``all_pairs``  every ordered pair (enrollment utterance, full & clean) x (another test
  utterance at the condition), target and non-target;
* ``profile``    per speaker a profile = mean of ``n_enroll`` (3) randomly drawn
  utterances; every utterance not drawn for a profile is tested against every profile;
  repeated over ``draws`` seeded draws, reported as mean +- sd; also top-1 open-set
  identification (best profile is the true speaker; and, for systems with a threshold,
  best profile is the true speaker *and* reaches the threshold).

Metrics: EER and minDCF (p_target 0.01, normalised by p_target) by speechbrain via
``nessa.metrics``; the fraction of the gap recovered,
``(EER_runtime_sym - EER_x) / (EER_runtime_sym - EER_enroll_sym)``, only where that gap
is at least ``MIN_GAIN_GAP_POINTS`` EER points.

Embedders are passed in (nessa/ never imports the service or the model packages). Every
utterance and crop is embedded once per model and cached (``nessa.lab.data.EmbeddingCache``,
keyed by model version + weights sha256 + file + crop/noise spec). Audio can be bypassed
with an ``embeddings.EmbeddingProvider`` (the tests use synthetic embeddings).

Modules: ``conditions`` (crops and noise), ``embeddings`` (both models' embeddings of the
corpora), ``systems`` / ``baselines`` / ``gallery_systems`` (what is scored), ``protocols``
(all pairs, profiles; the figures), ``report`` (tables, JSON, DET curves), ``harness``
(``evaluate``: all of it in one run).
"""
