"""The Python-backend models of the Triton repository; `release/triton.py` copies each in as `<model>/1/model.py`.

They run inside Triton's Python backend (`triton_python_backend_utils` exists only there) with ernie-cls installed
in its Python (`pip install ernie-cls`: numpy and tokenizers only), so Triton tokenises and scores exactly as the REST
service does. tests/test_triton.py runs them against a stand-in of the backend's utilities.
"""
