"""User-facing surfaces: the `tusou` command line and the Gradio app."""
