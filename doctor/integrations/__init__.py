"""The live doctor inside other trainers: `lightning.DoctorCallback` for PyTorch Lightning and
`huggingface.DoctorCallback` for the Hugging Face `Trainer`.

Each module imports its framework; `import quad_doctor` imports neither.
"""
