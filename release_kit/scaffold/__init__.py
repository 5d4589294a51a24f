"""Files `release-kit init` writes into a model repository (templates with [[ ]] placeholders, so that
GitHub's ${{ }} expressions in the workflows stay as they are)."""
