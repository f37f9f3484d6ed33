// OpenSSL's libcrypto (Debian: libssl-dev, pkg-config "libcrypto"): the EVP digest API for the SHA-256 digests
// that checkpoints store. Exposes EVP_MD_CTX_new/free/copy_ex, EVP_DigestInit_ex/Update/Final_ex, EVP_sha256.
#include <openssl/evp.h>
