"""The RapidAI4EO corpus: its layout, the embedded synthetic generator, index and reader."""
