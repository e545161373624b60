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

/* ---- One generated token through one Mamba-1 block (decode_step.py) ----
 *
 * out = h + mixer(RMSNorm(h)) for the rows [b0, b1) of a batch of B, the same steps as
 * `Block.step` / `MambaMixer.step` in model/ (read them first), with the conv window and the scan
 * state advanced in place. Why C: in PyTorch a token is about 40 tiny ops per block, each a few
 * microseconds of dispatch for a few hundred multiply-adds; here the block is one call, and each
 * weight row is read once for all the rows of the batch (kept in L1 across them).
 *
 *   h, out: (B, H)   norm_w: (H,)   in_w: (2D, H)   conv_w: (D, K)   conv_state: (B, D, K)
 *   x_w: (R + 2N, D)   dt_w: (D, R)   A_log, ssm_state: (D, N), (B, D, N)   out_w: (H, D)
 *   in_b, conv_b, out_b: their biases or NULL   dt_b, Dk: (D,)
 */

/* y[r, o] = W[o] . x[r] (+ bias[o]) for rows r < rows: W (O, I) row-major, x rows xs apart, y ys apart */
static void matvec(int64_t rows, int64_t O, int64_t I, const float *W, const float *bias,
                   const float *x, int64_t xs, float *y, int64_t ys) {
    for (int64_t o = 0; o < O; o++) {
        const float *w = W + o * I;
        for (int64_t r = 0; r < rows; r++) {
            const float *xr = x + r * xs;
            float s = 0.0f;
#pragma omp simd reduction(+ : s)
            for (int64_t i = 0; i < I; i++) s += w[i] * xr[i];
            y[r * ys + o] = bias ? s + bias[o] : s;
        }
    }
}

int mamba1_block_step(int64_t B, int64_t b0, int64_t b1, int64_t H, int64_t D, int64_t N, int64_t R, int64_t K,
                      float eps, const float *h, float *out, const float *norm_w,
                      const float *in_w, const float *in_b, const float *conv_w, const float *conv_b,
                      float *conv_state, const float *x_w, const float *dt_w, const float *dt_b,
                      const float *A_log, const float *Dk, float *ssm_state, const float *out_w, const float *out_b) {
    const int64_t rows = b1 - b0, E = R + 2 * N;
    (void)B;
    float *buf = malloc(sizeof(float) * (size_t)(rows * (H + 2 * D + E + 2 * D)));
    if (!buf) return 1;
    float *normed = buf, *xz = normed + rows * H, *dbc = xz + rows * 2 * D, *dt = dbc + rows * E, *y = dt + rows * D;
    for (int64_t r = 0; r < rows; r++) {  /* RMSNorm: h / rms(h) * weight */
        const float *hr = h + (b0 + r) * H;
        float ss = 0.0f;
        for (int64_t i = 0; i < H; i++) ss += hr[i] * hr[i];
        const float scale = 1.0f / sqrtf(ss / (float)H + eps);
        for (int64_t i = 0; i < H; i++) normed[r * H + i] = norm_w[i] * (hr[i] * scale);
    }
    matvec(rows, 2 * D, H, in_w, in_b, normed, H, xz, 2 * D);  /* x: xz[:D], the gate z: xz[D:] */
    for (int64_t r = 0; r < rows; r++) {  /* the causal conv: the window shifts by one, then SiLU */
        float *x = xz + r * 2 * D, *win = conv_state + (b0 + r) * D * K;
        for (int64_t d = 0; d < D; d++) {
            float *wd = win + d * K, s = conv_b ? conv_b[d] : 0.0f;
            for (int64_t k = 0; k < K - 1; k++) wd[k] = wd[k + 1];
            wd[K - 1] = x[d];
            for (int64_t k = 0; k < K; k++) s += wd[k] * conv_w[d * K + k];
            x[d] = s * sigmoidf(s);
        }
    }
    matvec(rows, E, D, x_w, NULL, xz, 2 * D, dbc, E);  /* the step's rank-R input, B and C */
    matvec(rows, D, R, dt_w, dt_b, dbc, E, dt, D);
    for (int64_t r = 0; r < rows; r++) {  /* one step of the scan, its read-out, the D skip, the gate */
        const float *x = xz + r * 2 * D, *z = x + D, *Bt = dbc + r * E + R, *Ct = Bt + N;
        float *state = ssm_state + (b0 + r) * D * N, *yr = y + r * D, *dtr = dt + r * D;
        for (int64_t d = 0; d < D; d++) {
            const float step = softplus(dtr[d]), u = step * x[d];
            float *hd = state + d * N, acc = 0.0f;
            const float *Ad = A_log + d * N;
#pragma omp simd reduction(+ : acc)
            for (int64_t n = 0; n < N; n++) {
                hd[n] = expf(-step * expf(Ad[n])) * hd[n] + u * Bt[n];  /* A = -exp(A_log) */
                acc += hd[n] * Ct[n];
            }
            yr[d] = (acc + Dk[d] * x[d]) * z[d] * sigmoidf(z[d]);
        }
    }
    matvec(rows, H, D, out_w, out_b, y, D, out + b0 * H, H);
    for (int64_t r = 0; r < rows; r++)  /* the residual */
        for (int64_t i = 0; i < H; i++) out[(b0 + r) * H + i] += h[(b0 + r) * H + i];
    free(buf);
    return 0;
}

/* ---- The mixer's causal depthwise conv, time-major, forward (model/scan.py's _ShiftConv) ----
 *
 * out[t, b, c] = bias[c] + sum_lag wt[K-1-lag, c] * x[t-lag, b, c], a tap dropped where it reads before the window or before the document's start
 * (since[t, b] < lag: how far token t is from its document's first token; NULL: one document).
 * x's (t, b) rows lie x_row floats apart (a view into in_proj's output), channels contiguous; wt is
 * the weight transposed to (K, C) so that each tap's loop over channels is contiguous; out (L, B, C).
 * Why C: in PyTorch each tap is a whole-tensor multiply and add (about 4 passes over (L, B, C) per
 * tap); here each output row is written once, while its K input rows are in cache. */
void conv_forward(int64_t L, int64_t B, int64_t C, int64_t K, const float *x, int64_t x_row, const float *wt,
                  const float *bias, const int64_t *since, float *out) {
    for (int64_t b = 0; b < B; b++) {
        for (int64_t t = 0; t < L; t++) {
            float *o = out + (t * B + b) * C;
            for (int64_t c = 0; c < C; c++) o[c] = bias ? bias[c] : 0.0f;
            const int64_t reach = since ? since[t * B + b] : t;  /* taps up to this lag stay in the document */
            for (int64_t lag = 0; lag < K && lag <= t && lag <= reach; lag++) {
                const float *xr = x + ((t - lag) * B + b) * x_row, *w = wt + (K - 1 - lag) * C;
#pragma omp simd
                for (int64_t c = 0; c < C; c++) o[c] += w[c] * xr[c];
            }
        }
    }
}
