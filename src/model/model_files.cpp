#include "model/model_files.h"

#include <filesystem>

#include "core/error.h"
#include "model/arch/arch.h"

namespace statelm {

namespace fs = std::filesystem;

ModelFiles open_model_files(const std::string& dir, bool require_weights) {
  ModelFiles m;
  fs::path p(dir);
  if (fs::is_regular_file(p)) {  // a bare config.json: spec only
    m.spec = spec_from_config_file(p.string());
    if (require_weights) fail(ErrorKind::InvalidArgument, dir, ": is a file; weights need the model folder");
    return m;
  }
  if (!fs::is_directory(p)) fail(ErrorKind::Io, dir, ": no such model folder");
  const fs::path config = p / "config.json";
  if (!fs::exists(config)) fail(ErrorKind::Io, dir, ": no config.json in the model folder");
  m.spec = spec_from_config_file(config.string());
  if (require_weights || Checkpoint::exists_in(dir)) {
    m.checkpoint = Checkpoint::open(dir);
    m.checkpoint->validate(expected_tensors(m.spec));
  }
  return m;
}

}  // namespace statelm
