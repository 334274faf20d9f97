"""The attack and evaluation harness: protect -> purify -> personalize -> generate -> measure."""
