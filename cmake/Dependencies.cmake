# Third-party libraries, all from Debian's -dev packages (scripts/setup installs them).
find_package(Threads REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(CLI11 REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
# utf8proc: Unicode normalisation (NFC/NFKC) for tokenizer normalizers.
find_path(UTF8PROC_INCLUDE_DIR utf8proc.h REQUIRED)
find_library(UTF8PROC_LIBRARY utf8proc REQUIRED)
add_library(statelm_utf8proc INTERFACE)
target_include_directories(statelm_utf8proc INTERFACE ${UTF8PROC_INCLUDE_DIR})
target_link_libraries(statelm_utf8proc INTERFACE ${UTF8PROC_LIBRARY})
# Sessions: SQLite holds persisted conversations; zstd compresses state snapshots.
find_package(SQLite3 REQUIRED)
pkg_check_modules(ZSTD REQUIRED IMPORTED_TARGET libzstd)
