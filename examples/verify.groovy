// The example's Main trained the generated model, evaluated it and sampled from it.
def log = new File(basedir, 'build.log').text
def trained = log =~ /trained TinyMoe: loss ([0-9.]+) -> ([0-9.]+) over 5 steps/
assert trained.find()
assert Double.parseDouble(trained.group(2)) < Double.parseDouble(trained.group(1))
assert log =~ /held-out loss [0-9.]+; expert loads \[\[\d+, \d+, \d+, \d+\], \[\d+, \d+, \d+, \d+\]\]/
assert log.contains('generated: ')
assert new File(basedir, 'target/tiny.safetensors').isFile()
