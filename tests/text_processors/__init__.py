"""Tests of cogvlm.text_processors."""
