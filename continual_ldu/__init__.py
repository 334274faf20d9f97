"""continual_ldu: protect images against unauthorized personalization of diffusion models.

Static Latent Diffusion Unlearning (one forward pass per image: encode -> invert -> shift ->
denoise -> decode) and its adaptive continual min-max training against an attacker who keeps
fine-tuning, with the attack and evaluation harness that measures it.
"""

__version__ = "0.1.0"
