"""Brain extraction: the intracranial mask that every tumour finding is limited to."""
