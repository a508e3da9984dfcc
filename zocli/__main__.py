"""`python -m zocli`"""
from .cli import app

app(prog_name="zocli")
