"""Test suite of cogvlm."""
