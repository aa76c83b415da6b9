#include "kiln/framework/file_io.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "kiln/framework/error.h"

namespace kiln {

namespace {

std::string reason(int err) {
  return std::strerror(err);
}

// Closes a descriptor when it goes out of scope.
class FileDescriptor {
 public:
  explicit FileDescriptor(int fd = -1) : fd_(fd) {}
  ~FileDescriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  FileDescriptor(FileDescriptor&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  int get() const { return fd_; }
  /// Gives the descriptor up: the caller closes it.
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }
  /// Closes now, returning close()'s error (0 when it succeeded).
  int close() {
    int err = 0;
    if (fd_ >= 0 && ::close(fd_) != 0) err = errno;
    fd_ = -1;
    return err;
  }

 private:
  int fd_;
};

// The folder part of `path` ("." for a bare file name) and the file name.
void split_path(const std::string& path, std::string* folder, std::string* name) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) {
    *folder = ".";
    *name = path;
  } else {
    *folder = slash == 0 ? "/" : path.substr(0, slash);
    *name = path.substr(slash + 1);
  }
}

// True for "<digits>.<digits>": the tail of a temporary made by write_file_atomically.
bool is_temporary_tail(const std::string& tail) {
  const size_t dot = tail.find('.');
  if (dot == std::string::npos || dot == 0 || dot + 1 == tail.size()) return false;
  for (size_t i = 0; i < tail.size(); ++i)
    if (i != dot && (tail[i] < '0' || tail[i] > '9')) return false;
  return true;
}

bool same_file(int fd, const std::string& path) {
  struct stat by_fd {
  }, by_path{};
  return ::fstat(fd, &by_fd) == 0 && ::lstat(path.c_str(), &by_path) == 0 &&
         by_fd.st_dev == by_path.st_dev && by_fd.st_ino == by_path.st_ino;
}

// Removes temporaries `<name>.tmp.<pid>.<n>` in `folder` whose writer is gone. A live writer
// holds an exclusive lock on its temporary from the moment it has checked that the name is
// still its own until after the rename, and the lock dies with the process; so a temporary
// whose lock can be taken (and that still has its name) belongs to nobody. Best effort: a
// folder that cannot be listed is left alone (the save itself reports real problems).
void remove_dead_temporaries(const std::string& folder, const std::string& name) {
  DIR* dir = ::opendir(folder.c_str());
  if (!dir) return;
  const std::string prefix = name + ".tmp.";
  while (const dirent* entry = ::readdir(dir)) {
    const std::string entry_name = entry->d_name;
    if (entry_name.compare(0, prefix.size(), prefix) != 0 ||
        !is_temporary_tail(entry_name.substr(prefix.size())))
      continue;
    const std::string candidate = folder + "/" + entry_name;
    FileDescriptor fd(::open(candidate.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK));
    if (fd.get() < 0) continue;
    struct stat info {};
    if (::fstat(fd.get(), &info) != 0 || !S_ISREG(info.st_mode)) continue;
    if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) continue;  // its writer is alive
    if (same_file(fd.get(), candidate)) ::unlink(candidate.c_str());
  }
  ::closedir(dir);
}

void write_all(int fd, std::string_view data, const std::string& path) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0)
      throw FileError(str("[io] ", path, ": writing ", data.size(), " bytes failed after ", done,
                          ": ", reason(errno)));
    done += static_cast<size_t>(n);
  }
}

}  // namespace

void write_file_atomically(const std::string& path, const std::string& data) {
  write_file_atomically(path, std::vector<std::string_view>{data});
}

void write_file_atomically(const std::string& path, const std::vector<std::string_view>& parts) {
  write_file_atomically(path, [&](FileWriter& out) {
    for (std::string_view part : parts) out.append(part);
  });
}

namespace {

// The temporary's descriptor, with the length appended so far (write_at stays inside it).
class TemporaryWriter final : public FileWriter {
 public:
  TemporaryWriter(int fd, const std::string& path) : fd_(fd), path_(path) {}
  void append(std::string_view data) override {
    write_all(fd_, data, path_);
    size_ += data.size();
  }
  void write_at(uint64_t offset, std::string_view data) override {
    KILN_CHECK(offset <= size_ && data.size() <= size_ - offset, FileError, "[io] ", path_,
               ": a write of ", data.size(), " bytes at ", offset, " passes the ", size_,
               " bytes written");
    for (size_t done = 0; done < data.size();) {
      const ssize_t n =
          ::pwrite(fd_, data.data() + done, data.size() - done, static_cast<off_t>(offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0)
        throw FileError(str("[io] ", path_, ": writing ", data.size(), " bytes at ", offset,
                            " failed after ", done, ": ", reason(errno)));
      done += static_cast<size_t>(n);
    }
  }

 private:
  int fd_;
  const std::string& path_;
  uint64_t size_ = 0;
};

}  // namespace

void write_file_atomically(const std::string& path,
                           const std::function<void(FileWriter&)>& produce) {
  std::string folder, name;
  split_path(path, &folder, &name);
  KILN_CHECK(!name.empty(), FileError, "[io] ", path, ": not a file name (it ends with '/')");
  remove_dead_temporaries(folder, name);

  // A temporary no other call uses: the pid tells processes apart, the counter threads and
  // calls; O_EXCL refuses a leftover of the same name (then the next number is tried).
  static std::atomic<uint64_t> counter{0};
  std::string tmp;
  FileDescriptor fd = [&] {
    for (int attempt = 0; attempt < 1000; ++attempt) {
      tmp = str(path, ".tmp.", ::getpid(), ".", counter.fetch_add(1));
      FileDescriptor made(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666));
      if (made.get() < 0) {
        const int err = errno;
        if (err == EEXIST) continue;
        throw FileError(str("[io] ", path, ": cannot open the temporary file ", tmp,
                            " for writing: ", reason(err)));
      }
      // Lock, then check the name is still ours: a cleaner that locked the new file before us
      // took it for a dead writer's and may have removed it; then start again.
      if (::flock(made.get(), LOCK_EX) != 0) {
        const int err = errno;
        ::unlink(tmp.c_str());
        throw FileError(str("[io] ", path, ": cannot lock ", tmp, ": ", reason(err)));
      }
      if (same_file(made.get(), tmp)) return made;
    }
    throw FileError(str("[io] ", path, ": no unused temporary name after 1000 tries (", tmp, ")"));
  }();
  try {
    TemporaryWriter writer(fd.get(), path);
    produce(writer);
    if (::fsync(fd.get()) != 0)
      throw FileError(str("[io] ", path, ": cannot flush the file to disk: ", reason(errno)));
    if (::rename(tmp.c_str(), path.c_str()) != 0)
      throw FileError(
          str("[io] ", path, ": cannot rename the finished file into place: ", reason(errno)));
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  // The rename is durable once the folder is: sync it (some file systems refuse to sync a
  // folder; the file itself is safe then too, so that is not an error).
  FileDescriptor dir(::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir.get() >= 0 && ::fsync(dir.get()) != 0 && errno != EINVAL && errno != EROFS)
    throw FileError(str("[io] ", path, ": cannot flush the folder ", folder, ": ", reason(errno)));
  if (int err = fd.close(); err != 0)
    throw FileError(str("[io] ", path, ": closing the written file failed: ", reason(err)));
}

FileReader::FileReader(const std::string& path) : path_(path) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer. It changes nothing for regular
  // files, the only kind read.
  FileDescriptor fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  KILN_CHECK(fd.get() >= 0, FileError, "[io] ", path, ": cannot open: ", reason(errno));
  struct stat info {};
  KILN_CHECK(::fstat(fd.get(), &info) == 0, FileError, "[io] ", path,
             ": cannot stat: ", reason(errno));
  if (!S_ISREG(info.st_mode)) {
    const char* kind = S_ISDIR(info.st_mode)                            ? "a folder"
                       : S_ISFIFO(info.st_mode)                         ? "a FIFO"
                       : S_ISSOCK(info.st_mode)                         ? "a socket"
                       : S_ISCHR(info.st_mode) || S_ISBLK(info.st_mode) ? "a device"
                                                                        : "not a regular file";
    throw FileError(str("[io] ", path, ": is ", kind, ", not a regular file"));
  }
  size_ = static_cast<uint64_t>(info.st_size);
  fd_ = fd.release();
}

FileReader::~FileReader() {
  if (fd_ >= 0) ::close(fd_);
}

void FileReader::read_at(uint64_t offset, void* out, size_t count) const {
  auto* bytes = static_cast<char*>(out);
  size_t done = 0;
  while (done < count) {
    const ssize_t n = ::pread(fd_, bytes + done, count - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    KILN_CHECK(n >= 0, FileError, "[io] ", path_, ": read failed: ", reason(errno));
    KILN_CHECK(n > 0, FileError, "[io] ", path_, ": the file ended at byte ", offset + done,
               " while ", count, " bytes at ", offset, " were read (it shrank?)");
    done += static_cast<size_t>(n);
  }
}

std::string read_file(const std::string& path, size_t max_bytes) {
  const FileReader file(path);
  KILN_CHECK(file.size() <= max_bytes, FileError, "[io] ", path, ": ", file.size(),
             " bytes is larger than the limit of ", max_bytes);
  std::string data(static_cast<size_t>(file.size()), '\0');
  file.read_at(0, data.data(), data.size());
  return data;
}

}  // namespace kiln
