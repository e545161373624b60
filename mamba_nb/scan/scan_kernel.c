/* Mamba-1's selective scan recurrence on CPU, forward and backward, float32, time-major.
 *
 * The same recurrence as selective.py's `_Recurrence` (read its docstring first), for the rows
 * [b0, b1) of the batch and the channels [d0, d1) (the forward) so that Python threads can split
 * the work: each (b, d) chain is independent, only the sums over d (the gradients of B and C) and
 * over b (the gradient of A) meet, and the backward's callers give each thread its own rows and
 * its own A-gradient buffer. Shapes, all contiguous:
 *
 *   dt, x, y, gy, gdt, gx: (L, B, D)   At: (N, D)   Bm, Cm, gB, gC: (L, B, N)
 *   H: (L, B, N, D) the states, or (B, N, D) when h_step == 0 (no gradient needed: each step
 *   overwrites the last)   reset: (L, B) bytes, 1 where the state starts afresh, or NULL
 *   glast: (B, D, N) the gradient of the final state (HF's layout), or NULL   gA: (N, D), added to
 *
 * The fused form (bias, Dk, z given; compiled.py's `fused_scan`): dt enters raw and becomes
 * softplus(dt + bias) row by row, and the output is (y + Dk x) * silu(z), with their gradients in the
 * backward: about fifteen whole-tensor passes around the scan fewer per layer and step.
 *
 * Why C: in PyTorch each of the per-element steps below is a pass over a 64 MB (L, B, N, D) tensor
 * (selective.py makes about a dozen per layer and step); here they are one pass, with the state of
 * a row kept in cache. Compiled on first use by compiled.py, which falls back to selective.py
 * where no C compiler is found.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* softplus(v), as torch computes it (linear above 20) */
static inline float softplus(float v) { return v > 20.0f ? v : log1pf(expf(v)); }

/* The step sizes of one row: softplus(dt + bias) into out, or dt itself when bias is NULL. */
static const float *step_sizes(const float *dt, const float *bias, float *out, int64_t d0, int64_t d1) {
    if (!bias) return dt;
    for (int64_t d = d0; d < d1; d++) out[d] = softplus(dt[d] + bias[d]);
    return out;
}

static inline float sigmoidf(float v) { return 1.0f / (1.0f + expf(-v)); }

/* The fused form (bias, Dk, z not NULL; each optional): dt enters raw and is softplus(dt + bias)
 * here, and y_t = (C_t . h_t + Dk * x_t) * silu(z_t); ypre (L, B, D), if not NULL, keeps the value
 * before the gate for the backward. With all four NULL: the plain recurrence of selective.py. */
int scan_forward(int64_t L, int64_t B, int64_t N, int64_t D, int64_t b0, int64_t b1, int64_t d0, int64_t d1,
                 const float *dt, const float *x, const float *At, const float *Bm, const float *Cm,
                 const uint8_t *reset, float *H, int64_t h_step, float *y,
                 const float *bias, const float *Dk, const float *z, float *ypre) {
    float *dts_buf = bias ? malloc(sizeof(float) * (size_t)D) : NULL;
    if (bias && !dts_buf) return 1;
    for (int64_t b = b0; b < b1; b++) {
        for (int64_t t = 0; t < L; t++) {
            const int64_t row = t * B + b;
            const float *dtt = step_sizes(dt + row * D, bias, dts_buf, d0, d1);
            const float *xt = x + row * D, *Bt = Bm + row * N, *Ct = Cm + row * N;
            float *Ht = H + (h_step ? t * h_step : 0) + b * N * D;
            const float *Hp = t > 0 ? H + (h_step ? (t - 1) * h_step : 0) + b * N * D : NULL;
            const int fresh = t == 0 || (reset && reset[row]);
            float *yt = y + row * D;
            for (int64_t d = d0; d < d1; d++) yt[d] = 0.0f;
            for (int64_t n = 0; n < N; n++) {
                const float bn = Bt[n], cn = Ct[n];
                const float *An = At + n * D;
                float *h = Ht + n * D;
                if (fresh) {
#pragma omp simd
                    for (int64_t d = d0; d < d1; d++) {
                        h[d] = dtt[d] * xt[d] * bn;
                        yt[d] += cn * h[d];
                    }
                } else {
                    const float *hp = Hp + n * D;
#pragma omp simd
                    for (int64_t d = d0; d < d1; d++) {
                        h[d] = expf(dtt[d] * An[d]) * hp[d] + dtt[d] * xt[d] * bn;
                        yt[d] += cn * h[d];
                    }
                }
            }
            if (Dk || z) {  /* the D skip and the gate, while the row is in cache */
                const float *zt = z ? z + row * D : NULL;
                float *pt = ypre ? ypre + row * D : NULL;
                for (int64_t d = d0; d < d1; d++) {
                    const float v = Dk ? yt[d] + Dk[d] * xt[d] : yt[d];
                    if (pt) pt[d] = v;
                    yt[d] = zt ? v * zt[d] * sigmoidf(zt[d]) : v;
                }
            }
        }
    }
    free(dts_buf);
    return 0;
}

/* The adjoint recurrence in reverse, for rows [b0, b1), all channels. g (N, D) is dLoss/dh_t,
 * kept in cache: the direct term C_t gy_t plus what flows back from h_{t+1} through its decay. */
/* The fused form's extras as in scan_forward (NULL: not fused): gy is then the gradient of the gated
 * output, gz (L, B, D) receives z's, gDk and gbias (D,) are added to (one buffer per thread). */
int scan_backward(int64_t L, int64_t B, int64_t N, int64_t D, int64_t b0, int64_t b1,
                  const float *dt, const float *x, const float *At, const float *Bm, const float *Cm,
                  const uint8_t *reset, const float *H, const float *gy, const float *glast,
                  float *gdt, float *gx, float *gB, float *gC, float *gA,
                  const float *bias, const float *Dk, const float *z, const float *ypre,
                  float *gz, float *gDk, float *gbias) {
    float *g = malloc(sizeof(float) * (size_t)(N * D + 4 * D));
    if (!g) return 1;
    float *gdtx = g + N * D, *gdec = gdtx + D;  /* per step: sum_n g B, sum_n P A */
    float *dts_buf = gdec + D, *gy_buf = dts_buf + D;  /* the row's step sizes; its gradient before the gate */
    for (int64_t b = b0; b < b1; b++) {
        for (int64_t n = 0; n < N; n++)
            for (int64_t d = 0; d < D; d++) g[n * D + d] = glast ? glast[(b * D + d) * N + n] : 0.0f;
        for (int64_t t = L - 1; t >= 0; t--) {
            const int64_t row = t * B + b;
            const float *dtt = step_sizes(dt + row * D, bias, dts_buf, 0, D);
            const float *xt = x + row * D, *Bt = Bm + row * N, *Ct = Cm + row * N;
            const float *gyt = gy + row * D;
            if (z) {  /* through the gate: out = v * silu(z) */
                const float *zt = z + row * D, *pt = ypre + row * D;
                float *gzt = gz + row * D;
                for (int64_t d = 0; d < D; d++) {
                    const float s = sigmoidf(zt[d]);
                    gy_buf[d] = gyt[d] * zt[d] * s;
                    gzt[d] = gyt[d] * pt[d] * s * (1.0f + zt[d] * (1.0f - s));
                }
                gyt = gy_buf;
            }
            const float *Ht = H + row * N * D;
            const int fresh = t == 0 || (reset && reset[row]);
            const float *Hp = fresh ? NULL : H + (row - B) * N * D;
            memset(gdtx, 0, sizeof(float) * (size_t)(2 * D));
            for (int64_t n = 0; n < N; n++) {
                const float bn = Bt[n], cn = Ct[n];
                const float *An = At + n * D, *h = Ht + n * D;
                float *gn = g + n * D, *gAn = gA + n * D;
                float sum_b = 0.0f, sum_c = 0.0f;
                if (fresh) {  /* h_{t-1} is not read: no gradient through the decay, nothing flows on */
#pragma omp simd reduction(+ : sum_b, sum_c)
                    for (int64_t d = 0; d < D; d++) {
                        const float gv = gn[d] + cn * gyt[d];
                        sum_c += h[d] * gyt[d];
                        sum_b += gv * dtt[d] * xt[d];
                        gdtx[d] += gv * bn;
                        gn[d] = 0.0f;
                    }
                } else {
                    const float *hp = Hp + n * D;
#pragma omp simd reduction(+ : sum_b, sum_c)
                    for (int64_t d = 0; d < D; d++) {
                        const float gv = gn[d] + cn * gyt[d];
                        const float decay = expf(dtt[d] * An[d]);
                        const float p = gv * decay * hp[d];  /* dLoss/d(dt * A) */
                        sum_c += h[d] * gyt[d];
                        sum_b += gv * dtt[d] * xt[d];
                        gdtx[d] += gv * bn;
                        gdec[d] += p * An[d];
                        gAn[d] += p * dtt[d];
                        gn[d] = gv * decay;
                    }
                }
                gB[row * N + n] = sum_b;
                gC[row * N + n] = sum_c;
            }
            float *gdtt = gdt + row * D, *gxt = gx + row * D;
            for (int64_t d = 0; d < D; d++) {
                gdtt[d] = gdtx[d] * xt[d] + gdec[d];
                gxt[d] = gdtx[d] * dtt[d];
                if (Dk) {  /* the skip D * x */
                    gxt[d] += gyt[d] * Dk[d];
                    gDk[d] += gyt[d] * xt[d];
                }
                if (bias) {  /* through softplus(dt + bias): its derivative is the sigmoid */
                    gdtt[d] *= sigmoidf(dt[row * D + d] + bias[d]);
                    gbias[d] += gdtt[d];
                }
            }
        }
    }
    free(g);
    return 0;
}
