"""The small fact models editscale trains itself, so that editing can be measured without downloads.

``ensure_built("demo")`` (``registry``) returns the directory of a built model, building it on first use;
``load_model("testbed:demo")`` loads it like any Hugging Face causal LM. ``specs`` says what each model is,
``train`` how it is built, ``skills`` which downstream tasks it learns, ``diagnostics`` how distinct its
subjects' keys are.
"""
