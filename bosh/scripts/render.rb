#!/usr/bin/env ruby
# render.rb JOB_DIR MANIFEST_PROPERTIES_YAML OUT_DIR
#
# Renders every template of a BOSH job (and its monit file) as the director
# would, for the release's tests: p and if_p read the manifest's properties,
# then the spec's defaults; spec gives this instance's address and name;
# link reads links from the YAML's "links" key. A property the manifest sets
# that the spec does not declare is an error, as is p of one that is not set
# and has no default. Only what this release's templates use is here.
#
# The templates run with no more of Ruby's library loaded than the
# director's context (bosh-template's evaluation_context.rb) loads: ostruct
# and its own files. A template that uses another (json, shellwords)
# requires it itself; render.rb stops if what it loads has brought one in,
# so that such a template fails here as it would on the director.
require "erb"
require "fileutils"
require "ostruct"
require "yaml"

%w[JSON Shellwords URI Base64 Digest SecureRandom].each do |lib|
  abort "render.rb: #{lib} is loaded before the templates run, and is not on the director" if Object.const_defined?(lib)
end

job_dir, manifest_file, out_dir = ARGV
abort "usage: render.rb JOB_DIR MANIFEST_PROPERTIES_YAML OUT_DIR" unless out_dir

spec = YAML.safe_load(File.read(File.join(job_dir, "spec")))
manifest = YAML.safe_load(File.read(manifest_file)) || {}
declared = spec.fetch("properties", {})

# flatten turns {"locker" => {"port" => 1}} into {"locker.port" => 1}.
def flatten(hash, prefix = nil, out = {})
  hash.each do |key, value|
    name = [prefix, key].compact.join(".")
    if value.is_a?(Hash)
      flatten(value, name, out)
    else
      out[name] = value
    end
  end
  out
end

props = flatten(manifest.fetch("properties", {}))
undeclared = props.keys.reject { |name| declared.key?(name) }
abort "properties not declared in #{job_dir}/spec: #{undeclared.join(", ")}" unless undeclared.empty?

# Template is what a job's templates see.
class Template
  Spec = Struct.new(:address, :ip, :name, :id, :index, :deployment, :bootstrap, keyword_init: true)

  def initialize(props, declared, links)
    @props, @declared, @links = props, declared, links
  end

  def spec
    Spec.new(address: "127.0.0.1", ip: "127.0.0.1", name: "locker", id: "0", index: 0,
             deployment: "locker", bootstrap: true)
  end

  def p(names, *default)
    Array(names).each { |n| v = lookup(n); return v unless v.nil? }
    return default.first unless default.empty?
    raise "Can't find property '#{Array(names).join("', '")}'"
  end

  def if_p(*names)
    values = names.map { |n| lookup(n) }
    return Else.new(true) if values.any?(&:nil?)
    yield(*values)
    Else.new(false)
  end

  def link(name)
    @links.fetch(name) { raise "Can't find link '#{name}'" }
  end

  def get_binding
    binding
  end

  private

  def lookup(name)
    raise "property '#{name}' is not declared in the job's spec" unless @declared.key?(name)
    return @props[name] if @props.key?(name)
    @declared[name]["default"]
  end

  # Else is if_p's answer, for if_p(...) { }.else { }.
  class Else
    def initialize(run) = @run = run
    def else
      yield if @run
    end
  end
end

template = Template.new(props, declared, manifest.fetch("links", {}))
render = lambda do |source, dest|
  out = File.join(out_dir, dest)
  FileUtils.mkdir_p(File.dirname(out))
  text = ERB.new(File.read(source), trim_mode: "-").result(template.get_binding)
  File.write(out, text)
  File.chmod(0o755, out) if dest.start_with?("bin/")
end
spec.fetch("templates", {}).each { |source, dest| render.call(File.join(job_dir, "templates", source), dest) }
render.call(File.join(job_dir, "monit"), "monit")
