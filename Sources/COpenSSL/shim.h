#ifndef CONTINUON_COPENSSL_SHIM_H
#define CONTINUON_COPENSSL_SHIM_H

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

/* BIO_get_mem_data is a macro; Swift cannot import it. */
static inline long cp_bio_mem_data(BIO *bio, char **out) {
    return BIO_ctrl(bio, BIO_CTRL_INFO, 0, (void *)out);
}

#endif
