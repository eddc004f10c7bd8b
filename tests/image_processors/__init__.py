"""Tests of cogvlm.image_processors."""
