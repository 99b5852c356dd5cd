// A model under src/test/moe is generated into the test sources, compiled with the tests only.
assert new File(basedir, 'target/generated-test-sources/moe/dev/it/Probe.java').isFile()
assert new File(basedir, 'target/test-classes/dev/it/Probe.class').isFile()
assert new File(basedir, 'target/test-classes/dev/it/ProbeUser.class').isFile()
assert !new File(basedir, 'target/classes/dev/it/Probe.class').exists()
assert !new File(basedir, 'target/generated-sources/moe').exists()
