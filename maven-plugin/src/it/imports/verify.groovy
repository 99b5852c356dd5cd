// The model built from an imported moe definition and constant is generated in its file's package;
// the imported file, which declares no model, generates nothing.
def source = new File(basedir, 'target/generated-sources/moe/dev/it/Importer.java')
assert source.isFile()
assert source.text.contains('package dev.it;')
assert source.text.contains('public static final int DIM = 16;')
assert !new File(basedir, 'target/generated-sources/moe/dev/it/shared').exists()
