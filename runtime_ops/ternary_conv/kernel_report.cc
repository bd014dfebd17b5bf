// The MICRONET_TERNARY_LOG line and the MICRONET_TERNARY_REPORT JSON line (see kernel_report.h).
#include "ternary_conv/kernel_report.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>

namespace micronet {
namespace ternary_conv {

namespace {

// A JSON string literal: quotes, backslashes and control characters escaped; other bytes as they are
// (node names are UTF-8 in ONNX).
std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (const char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += ch;
    }
  }
  out += '"';
  return out;
}

std::string Number(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

}  // namespace

void LogDecision(const KernelDecision& d) {
  std::fprintf(stderr,
               "micronet: %s: kernel=%s isa=%s density=%.4f nnz=%lld weight=[%lld,%lld,%lld,%lld] group=%lld "
               "effective=%.4f complement_rows=%lld plane=%lld (requested %s; auto picks dense at effective >= "
               "%.2f)\n",
               d.label.c_str(), d.kernel.c_str(), d.isa.c_str(), d.density, static_cast<long long>(d.nnz),
               static_cast<long long>(d.weight_shape[0]), static_cast<long long>(d.weight_shape[1]),
               static_cast<long long>(d.weight_shape[2]), static_cast<long long>(d.weight_shape[3]),
               static_cast<long long>(d.group), d.effective, static_cast<long long>(d.complement_rows),
               static_cast<long long>(d.plane), d.requested_algo.c_str(), d.dense_threshold);
  std::fflush(stderr);
}

std::string DecisionJson(const KernelDecision& d) {
  std::string j = "{\"report_version\":" + std::to_string(kKernelReportVersion);
  j += ",\"node\":" + JsonString(d.node);
  j += ",\"output\":" + JsonString(d.output);
  j += ",\"kernel\":" + JsonString(d.kernel);
  j += ",\"isa\":" + JsonString(d.isa);
  j += ",\"requested\":" + JsonString(d.requested);
  j += ",\"requested_isa\":" + JsonString(d.requested_isa);
  j += std::string(",\"forced\":") + (d.requested != "auto" ? "true" : "false");
  j += ",\"density\":" + Number("%.6f", d.density);
  j += ",\"effective\":" + Number("%.6f", d.effective);
  j += ",\"nnz\":" + std::to_string(d.nnz);
  j += ",\"weight_shape\":[" + std::to_string(d.weight_shape[0]) + "," + std::to_string(d.weight_shape[1]) + "," +
       std::to_string(d.weight_shape[2]) + "," + std::to_string(d.weight_shape[3]) + "]";
  j += ",\"group\":" + std::to_string(d.group);
  j += ",\"complement_rows\":" + std::to_string(d.complement_rows);
  j += ",\"plane\":" + std::to_string(d.plane);
  j += ",\"dense_threshold\":" + Number("%.6g", d.dense_threshold);
  j += ",\"pid\":" + std::to_string(static_cast<long long>(::getpid()));
  j += "}\n";
  return j;
}

void ReportDecision(const KernelDecision& d, const std::string& path) {
  const std::string line = DecisionJson(d);
  const std::string what = "MICRONET_TERNARY_REPORT='" + path.substr(0, 256) + "'";
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error(what + ": cannot open: " + std::strerror(errno));
  ssize_t written;
  do {
    written = ::write(fd, line.data(), line.size());
  } while (written < 0 && errno == EINTR);
  const int write_errno = errno;
  ::close(fd);
  if (written != static_cast<ssize_t>(line.size())) {
    throw std::runtime_error(what + ": cannot write: " +
                             (written < 0 ? std::strerror(write_errno) : std::string("short write")));
  }
}

}  // namespace ternary_conv
}  // namespace micronet
