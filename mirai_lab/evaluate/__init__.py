"""Evaluation: the domain classifier, torch-fidelity metrics on its features, and the 2D
structure score of hidden states. Import the submodules directly (`fidelity` pulls in
torch-fidelity and torchvision, which the other two do not need)."""
