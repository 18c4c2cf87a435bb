"""Steering a text-to-image diffusion pipeline through an SAE on its CLIP text encoder.

The SAE reads the token outputs of the pipeline's text encoder (``text_encoder(ids)[0]``, exactly
what the UNet cross-attends to). Steering edits those prompt embeddings before the pipeline sees
them:

- error-term form: ``e + decode(edited codes) - decode(codes)`` on the chosen token positions, so
  that an empty edit returns ``e`` bit for bit (the same recipe as :mod:`core.steering`);
- additive form: ``e + alpha * direction`` on the chosen positions (a feature's decoder direction,
  or a random control direction).

Only the conditional embeddings are steered; the negative (unconditional) embeddings of
classifier-free guidance stay those of the negative prompt, so guidance pushes *towards* the edit.

Feature naming is automatic: generate with a feature amplified and not (same seeds), score both
against a vocabulary of attribute words with a CLIP model, and name the feature after the word
whose score rises most relative to the rest of the vocabulary (:func:`relative`). The evaluation
repeats this on held-out seeds and prompts and reports the fraction of features whose
amplification raises the (relative, and raw) score of their own name.

Everything runs offline on a tiny random StableDiffusion pipeline built from configs
(:func:`tiny_pipeline`, :func:`save_tiny`): its images are noise, so figures on it measure the
mechanism, not semantics. Real pipelines (``stabilityai/sd-turbo``, any StableDiffusion-style
folder) load through :func:`load_pipeline` when the network allows.

Modules, one job each: :mod:`.vocabulary` (attribute words, corpus), :mod:`.tokenizer` and
:mod:`.tiny` (the offline tiny pipeline), :mod:`.pipeline` (loading, checks), :mod:`.encoding`
(prompt embeddings), :mod:`.steering` (edits, generation), :mod:`.scorer` (CLIP scores),
:mod:`.stats` (feature statistics), :mod:`.naming` (naming experiment), :mod:`.artefact` (files)
and :mod:`.steerer` (the runtime the app uses).
"""

from saescope.core.diffusion.artefact import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    NAMES_FILE,
    SAE_DIR,
    STATS_FILE,
    Artefact,
    load_artefact,
    push_artefact,
    save_artefact,
    write_json_atomic,
)
from saescope.core.diffusion.encoding import SITE, Encoded, check_prompt, encode_prompts
from saescope.core.diffusion.naming import (
    Probe,
    Setting,
    evaluate_probes,
    feature_probes,
    name_probes,
    random_probes,
    relative,
    summarize,
)
from saescope.core.diffusion.pipeline import (
    check_pipeline,
    check_sae_fits,
    default_scorer,
    image_size,
    load_pipeline,
    resolve_pipeline_spec,
    text_width,
)
from saescope.core.diffusion.scorer import (
    CLIP_MEAN,
    CLIP_STD,
    DEFAULT_SCORER,
    SCORER_DIR,
    ClipScorer,
)
from saescope.core.diffusion.stats import alive_features, feature_stats, sample_features
from saescope.core.diffusion.steerer import Steerer
from saescope.core.diffusion.steering import (
    add_direction,
    feature_vector,
    generate,
    steer_embeddings,
)
from saescope.core.diffusion.tiny import (
    TINY,
    TINY_VERSION,
    is_tiny,
    save_tiny,
    tiny_clip,
    tiny_folder,
    tiny_pipeline,
)
from saescope.core.diffusion.tokenizer import (
    tiny_tokenizer,
    tokenizer_words,
    write_tiny_tokenizer_files,
)
from saescope.core.diffusion.vocabulary import (
    ATTRIBUTES,
    NEUTRAL_TEMPLATE,
    OBJECTS,
    TEMPLATES,
    builtin_corpus,
    neutral_prompts,
    read_prompt_file,
    vocabulary,
)

__all__ = [
    "ATTRIBUTES",
    "OBJECTS",
    "TEMPLATES",
    "vocabulary",
    "builtin_corpus",
    "neutral_prompts",
    "read_prompt_file",
    "write_tiny_tokenizer_files",
    "tiny_tokenizer",
    "tiny_pipeline",
    "tiny_clip",
    "save_tiny",
    "tiny_folder",
    "is_tiny",
    "load_pipeline",
    "check_pipeline",
    "check_sae_fits",
    "Encoded",
    "encode_prompts",
    "check_prompt",
    "feature_vector",
    "steer_embeddings",
    "add_direction",
    "generate",
    "ClipScorer",
    "default_scorer",
    "feature_stats",
    "sample_features",
    "alive_features",
    "Setting",
    "Probe",
    "feature_probes",
    "random_probes",
    "relative",
    "name_probes",
    "evaluate_probes",
    "summarize",
    "Artefact",
    "save_artefact",
    "load_artefact",
    "push_artefact",
    "Steerer",
    "image_size",
    "text_width",
    # constants and helpers the pipeline step, the app and the tests use
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "SAE_DIR",
    "STATS_FILE",
    "NAMES_FILE",
    "SCORER_DIR",
    "TINY",
    "TINY_VERSION",
    "SITE",
    "DEFAULT_SCORER",
    "CLIP_MEAN",
    "CLIP_STD",
    "NEUTRAL_TEMPLATE",
    "tokenizer_words",
    "resolve_pipeline_spec",
    "write_json_atomic",
]
